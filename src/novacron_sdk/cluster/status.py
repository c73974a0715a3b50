"""``cluster_status(store)``: the cluster as the store sees it, for ``novacron status``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from novacron_sdk.cluster.controller import current_controller
from novacron_sdk.cluster.hosts import HostRecord, list_hosts
from novacron_sdk.cluster.ownership import OwnerRecord, list_owners

if TYPE_CHECKING:
    from novacron_sdk.config import NovaCronConfig
    from novacron_sdk.consensus.interface import StateStore
    from novacron_sdk.plugin.manager import NovaCronPluginManager


class ClusterStatus(BaseModel):
    """Live hosts, the controller, VM owners, and VMs whose owner is not a live host."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store: str
    controller: str | None
    hosts: list[HostRecord]
    vms: list[OwnerRecord]
    orphaned_vms: list[str] = Field(
        default_factory=list, description="VMs owned by a host that is not registered."
    )


async def cluster_status(store: StateStore) -> ClusterStatus:
    """Read hosts, controller and ownership records from ``store``."""
    hosts = await list_hosts(store)
    owners = await list_owners(store)
    live = {h.name for h in hosts}
    return ClusterStatus(
        store=store.name or type(store).__name__,
        controller=await current_controller(store),
        hosts=hosts,
        vms=owners,
        orphaned_vms=[o.vm for o in owners if o.host not in live],
    )


def open_configured_store(config: NovaCronConfig, plugins: NovaCronPluginManager) -> StateStore:
    """The state store that the ``state`` config section names, with its settings."""
    from novacron_sdk.config.sections import StateSettings

    state = config.get("state", StateSettings)
    return plugins.state_stores.get(state.store)(state.settings)


async def configured_cluster_status(
    config: NovaCronConfig, plugins: NovaCronPluginManager
) -> dict[str, Any]:
    """:func:`cluster_status` of the configured store, as JSON-ready data (store closed after)."""
    store = open_configured_store(config, plugins)
    try:
        return (await cluster_status(store)).model_dump(mode="json")
    finally:
        await store.close()
