"""The agent's cluster components: state store, host membership, controller campaign.

They do nothing unless ``cluster.enabled`` is true, so a single-machine agent never writes
cluster records. Registered by :func:`register_components`; the agent starts them after its
control API (the host record carries the API's URL).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from novacron_sdk.cluster.controller import ClusterController
from novacron_sdk.cluster.hosts import HostMembership, HostRecord
from novacron_sdk.cluster.ownership import record_owner
from novacron_sdk.cluster.status import open_configured_store
from novacron_sdk.errors import ConfigError, StateStoreError
from novacron_sdk.init.interface import Component

if TYPE_CHECKING:
    from novacron_sdk.agent.service import AgentService
    from novacron_sdk.consensus.interface import StateStore
    from novacron_sdk.plugin.registry import Registry

log = logging.getLogger(__name__)


class ClusterSettings(BaseModel):
    """``cluster``: whether this agent joins a cluster through the ``state`` store."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="Register this host and campaign.")
    lease_ttl_s: float = Field(default=10.0, gt=0, description="Host lease; expiry = host gone.")
    controller: bool = Field(default=True, description="Campaign for the controller role.")
    labels: dict[str, str] = Field(default_factory=dict, description="Announced with the host.")


def _settings(component: Component) -> ClusterSettings:
    try:
        return component.context.config.get("cluster", ClusterSettings)
    except ConfigError:
        return ClusterSettings()  # the section is not registered: cluster mode stays off


class StoreComponent(Component):
    """Opens the configured state store (``state`` section) as ``values["state_store"]``."""

    name: ClassVar[str] = "cluster.store"
    critical: ClassVar[bool] = False
    retries: ClassVar[int] = 2

    async def start(self) -> None:
        """Open the store and read from it once, so an unreachable store fails here."""
        self.store: StateStore | None = None
        if not _settings(self).enabled:
            return
        store = open_configured_store(self.context.config, self.context.plugins)
        try:
            await store.get("/novacron/")
        except BaseException:
            await store.close()
            raise
        self.store = store
        self.context.values["state_store"] = store

    async def stop(self) -> None:
        """Close the store."""
        if self.store is not None:
            await self.store.close()


class MemberComponent(Component):
    """Registers this host under a lease, and records it as owner of its unowned VMs."""

    name: ClassVar[str] = "cluster.member"
    depends_on: ClassVar[tuple[str, ...]] = ("cluster.store", "agent.api")
    critical: ClassVar[bool] = False

    async def start(self) -> None:
        """Register and start the lease keep-alive."""
        self.membership: HostMembership | None = None
        settings = _settings(self)
        store: StateStore | None = self.context.values.get("state_store")
        if not settings.enabled or store is None:
            return
        service: AgentService = self.context.values["service"]
        vcpus, memory_mib = service.capacity
        record = HostRecord(
            name=service.name,
            url=service.url,
            driver=service.driver.name,
            vcpus=vcpus,
            memory_mib=memory_mib,
            labels=settings.labels,
        )
        self.membership = HostMembership(store, record, ttl_s=settings.lease_ttl_s)
        await self.membership.start()
        # Owner records are keyed by VM name: the name travels with a migration (the
        # destination's VM may get a new id), so it must be unique in the cluster.
        for vm in await service.driver.list_vms():
            await record_owner(store, vm.name, service.name)

    async def stop(self) -> None:
        """Deregister at once (other hosts need not wait for the lease to expire)."""
        if self.membership is not None:
            await self.membership.stop()


class ControllerComponent(Component):
    """Campaigns for the cluster controller role in the background."""

    name: ClassVar[str] = "cluster.controller"
    depends_on: ClassVar[tuple[str, ...]] = ("cluster.member",)
    critical: ClassVar[bool] = False

    async def start(self) -> None:
        """Start campaigning (returns at once; leadership comes later, if ever)."""
        self.controller: ClusterController | None = None
        settings = _settings(self)
        store: StateStore | None = self.context.values.get("state_store")
        if not (settings.enabled and settings.controller) or store is None:
            return
        service: AgentService = self.context.values["service"]
        self.controller = ClusterController(store, service.name, ttl_s=settings.lease_ttl_s)
        self.controller.start()
        self.context.values["cluster_controller"] = self.controller

    async def stop(self) -> None:
        """Stop campaigning; resign if leading."""
        if self.controller is not None:
            with contextlib.suppress(StateStoreError):
                await self.controller.stop()


def register_components(registry: Registry[type[Component]]) -> None:
    """Register the cluster components."""
    registry.register("cluster.store", StoreComponent, description="Cluster state store")
    registry.register("cluster.member", MemberComponent, description="Host registration")
    registry.register("cluster.controller", ControllerComponent, description="Controller election")
