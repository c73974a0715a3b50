"""Builtin plugin: the embedded SQLite state store (one machine)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from novacron_sdk.plugin import hookimpl

if TYPE_CHECKING:
    from novacron_sdk.consensus.interface import StateStore
    from novacron_sdk.plugin.registry import Registry


@hookimpl
def novacron_register_state_stores(registry: Registry[type[StateStore]]) -> None:
    """Register the SQLite store."""
    registry.register(
        "sqlite",
        "novacron_sdk.builtin.sqlite_store:SqliteStore",
        description="SQLite in WAL mode, for one machine",
    )
