"""The agent's cluster components: state store, host membership, controller campaign.

They do nothing unless ``cluster.enabled`` is true, so a single-machine agent never writes
cluster records. Registered by :func:`register_components`; the agent starts them after its
control API (the host record carries the API's URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from novacron_sdk.cluster.controller import ClusterController
from novacron_sdk.cluster.hosts import HostMembership, HostRecord
from novacron_sdk.cluster.ownership import get_owner, record_owner, release_vm
from novacron_sdk.cluster.status import open_configured_store
from novacron_sdk.errors import ConfigError, NovaCronError, StateStoreError
from novacron_sdk.init.interface import Component
from novacron_sdk.models import VMState

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
    """Registers this host under a lease, and records it as owner of its unowned VMs.

    VMs are adopted at start and then every third of the lease ttl, so VMs created later
    (through the agent's API or the hypervisor itself) get an owner record too. A VM being
    migrated is left alone: its record is the migration's fence (see cluster/ownership.py).
    """

    name: ClassVar[str] = "cluster.member"
    depends_on: ClassVar[tuple[str, ...]] = ("cluster.store", "agent.api")
    critical: ClassVar[bool] = False

    async def start(self) -> None:
        """Register, adopt this host's unowned VMs, and start the keep-alive and adoption."""
        self.membership: HostMembership | None = None
        self._adopter: asyncio.Task[None] | None = None
        self._known: set[str] = set()
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
        try:
            await self._adopt(store, service)
        except BaseException:
            await self.membership.stop()  # stop() only runs for components that started
            raise
        self._adopter = asyncio.get_running_loop().create_task(
            self._adopt_forever(store, service, settings.lease_ttl_s / 3)
        )

    async def _adopt(self, store: StateStore, service: AgentService) -> None:
        """Record this host as the owner of each of its VMs that has no owner record yet,
        and release the records of this host's VMs that are gone.

        Owner records are keyed by VM name: the name travels with a migration (the
        destination's VM may get a new id), so it must be unique in the cluster. Names whose
        record names this host are remembered and not asked about again while the VM
        exists; a name recorded for another host is asked about again on the next pass (the
        record goes when that host's VM is destroyed). A remembered name whose VM is gone,
        and which no migration is moving, was destroyed (on the hypervisor directly, or
        through the API while a pass was running): its record is deleted if it still names
        this host.
        """
        vms = await service.driver.list_vms()
        present = {vm.name for vm in vms}
        busy = _migrating(service)
        for name in sorted(self._known - present - busy):
            if await release_vm(store, name, service.name):
                log.info("host %s released the record of its VM %s (gone)", service.name, name)
            self._known.discard(name)  # not before: a store error leaves it for the next pass
        for vm in vms:
            if vm.name in self._known or vm.state is VMState.MIGRATING:
                continue
            if vm.name in busy or vm.id in busy:
                continue
            if await record_owner(store, vm.name, service.name):
                log.info("host %s now owns VM %s", service.name, vm.name)
            else:
                owner = await get_owner(store, vm.name)
                if owner is not None and owner.host != service.name:
                    log.debug("VM %s here is recorded for host %s", vm.name, owner.host)
                    continue
            self._known.add(vm.name)

    async def _adopt_forever(
        self, store: StateStore, service: AgentService, interval_s: float
    ) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self._adopt(store, service)
            except (NovaCronError, OSError) as exc:
                log.warning("host %s: recording owners of new VMs failed: %s", service.name, exc)

    async def stop(self) -> None:
        """Stop adopting; deregister at once (other hosts need not wait for the lease)."""
        if self._adopter is not None:
            self._adopter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._adopter
        if self.membership is not None:
            await self.membership.stop()


_STREAM_BUSY = ("pending", "active")


def _migrating(service: AgentService) -> set[str]:
    """Ids and names of the VMs that this agent migrates, out or in, right now."""
    busy: set[str] = set()
    for out in service.outgoing.values():
        if not out.done.is_set():
            busy.update((out.vm, out.engine.vm))  # the VM's id, and its name
    busy.update(m.info.spec.name for m in service.incoming.values())
    busy.update(s.vm for s in service.incoming_streams.values() if s.vm and s.state in _STREAM_BUSY)
    return busy


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
