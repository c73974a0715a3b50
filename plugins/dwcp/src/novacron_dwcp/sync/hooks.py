"""Hook implementations of multi-region sync: the ``sync`` config section and component."""

from __future__ import annotations

from typing import TYPE_CHECKING

from novacron_sdk.plugin import hookimpl

if TYPE_CHECKING:
    from pydantic import BaseModel

    from novacron_sdk.init.interface import Component
    from novacron_sdk.plugin.registry import Registry


@hookimpl
def novacron_add_config_sections(registry: Registry[type[BaseModel]]) -> None:
    """The ``sync`` section (off unless ``sync.region`` is set)."""
    from novacron_dwcp.sync.settings import SyncSettings

    registry.register("sync", SyncSettings)


@hookimpl
def novacron_register_init_components(registry: Registry[type[Component]]) -> None:
    """The ``sync.node`` component (lazily: uvicorn and the CRDTs load when it starts)."""
    registry.register(
        "sync.node",
        "novacron_dwcp.sync.component:SyncComponent",
        description="Multi-region inventory sync",
    )
