"""Hooks of the consensus domain."""

from __future__ import annotations

from typing import TYPE_CHECKING

from novacron_sdk.plugin._spec import hookspec

if TYPE_CHECKING:
    from novacron_sdk.consensus.interface import StateStore
    from novacron_sdk.plugin.registry import Registry


@hookspec
def novacron_register_state_stores(registry: Registry[type[StateStore]]) -> None:
    """Register state store classes (subclasses of StateStore).

    Called once per plugin, the first time the plugin manager needs this registry (never
    at import time), with the shared registry. Call
    ``registry.register(name, "package.module:Class")``; a lazy reference keeps third-party
    SDKs unimported until the entry is used. A name already taken
    raises DuplicateNameError, and the plugin is reported as failed while others keep working.
    """
