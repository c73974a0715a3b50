"""The agent side of multi-region sync: the ``sync`` config section and the ``sync.node``
init component that replicates this host's VM inventory to the other regions.

Every ``interval_s`` the component writes each local VM into the replica's ``vms`` map
(key: VM id) and deletes VMs that went away; the anti-entropy loop carries the changes to
the peers. The replica lives only in memory, so after a restart the component also treats
every entry the replica holds for this host (``host`` = the agent's name, ``region`` = this
region), as handed back by the peers, as published: a VM deleted while the agent was down
is then deleted everywhere on the next pass instead of staying in every region for good.
``context.values["sync_node"]`` gives the node to other components.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, ClassVar

from novacron_dwcp.sync.node import SyncNode
from novacron_dwcp.sync.settings import SyncSettings
from novacron_sdk.errors import ConfigError, NovaCronError
from novacron_sdk.init.interface import Component

if TYPE_CHECKING:
    from novacron_sdk.agent.service import AgentService

log = logging.getLogger(__name__)


class SyncComponent(Component):
    """Serves the exchange endpoint, runs anti-entropy and publishes the local inventory."""

    name: ClassVar[str] = "sync.node"
    depends_on: ClassVar[tuple[str, ...]] = ("agent.service",)
    critical: ClassVar[bool] = False

    async def start(self) -> None:
        """Start the node (a no-op without ``sync.region``)."""
        self.node: SyncNode | None = None
        self._publisher: asyncio.Task[None] | None = None
        try:
            settings = self.context.config.get("sync", SyncSettings)
        except ConfigError:
            return  # the section is not registered: sync stays off
        if settings.region is None:
            return
        self.node = SyncNode(settings.region, settings.peers, interval_s=settings.interval_s)
        await self.node.serve(settings.host, settings.port)
        self.node.start()
        self.context.values["sync_node"] = self.node
        service: AgentService = self.context.values["service"]
        self._publisher = asyncio.get_running_loop().create_task(self._publish(service, settings))

    async def _publish(self, service: AgentService, settings: SyncSettings) -> None:
        assert self.node is not None
        replica = self.node.replica
        published: dict[str, Any] = {}
        while True:
            if self.node.exchanges:
                # What the peers hand back for this host is ours to keep or delete.
                published = {
                    **_owned(replica.map("vms").items(), service.name, settings),
                    **published,
                }
            try:
                vms = await service.driver.list_vms()
            except NovaCronError as exc:
                log.warning("sync: could not list VMs: %s", exc)
            else:
                now = {
                    vm.id: {
                        "name": vm.name,
                        "state": vm.state.value,
                        "host": service.name,
                        "region": settings.region,
                    }
                    for vm in vms
                }
                for vm_id, record in now.items():
                    if published.get(vm_id) != record:
                        replica.put("vms", vm_id, record)
                for vm_id in published.keys() - now.keys():
                    replica.delete("vms", vm_id)
                published = now
            await asyncio.sleep(settings.interval_s)

    async def stop(self) -> None:
        """Stop publishing and syncing."""
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
        if self.node is not None:
            await self.node.close()


def _owned(entries: dict[str, Any], host: str, settings: SyncSettings) -> dict[str, Any]:
    """The live ``vms`` entries that this host in this region published (in any run)."""
    return {
        vm_id: record
        for vm_id, record in entries.items()
        if isinstance(record, dict)
        and record.get("host") == host
        and record.get("region") == settings.region
    }
