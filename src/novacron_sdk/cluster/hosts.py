"""Host registration under a lease: a host's record disappears when its agent stops refreshing.

An agent calls :meth:`HostMembership.start`; a background task refreshes the lease every
third of its ttl. If the lease expired anyway (the agent was paused, the store unreachable
for longer than the ttl), the task registers the host again under a new lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from novacron_sdk.cluster.keys import HOSTS_PREFIX, host_key
from novacron_sdk.consensus.interface import StateStore
from novacron_sdk.errors import StateStoreError

log = logging.getLogger(__name__)


class HostRecord(BaseModel):
    """What a registered host announces about itself."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    url: str | None = Field(default=None, description="The agent's control API.")
    driver: str | None = None
    vcpus: int | None = None
    memory_mib: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    registered_at: float = Field(default_factory=time.time, description="Unix time.")


class HostMembership:
    """Keeps ``record`` registered in ``store`` under a lease of ``ttl_s`` seconds."""

    def __init__(self, store: StateStore, record: HostRecord, *, ttl_s: float = 10.0) -> None:
        if not ttl_s > 0:
            msg = f"host lease ttl must be positive, got {ttl_s}"
            raise StateStoreError(msg)
        self.store = store
        self.record = record
        self.ttl_s = ttl_s
        self.lease: int | None = None
        self.registrations = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def key(self) -> str:
        """The host's key in the store."""
        return host_key(self.record.name)

    async def _register(self) -> None:
        lease = await self.store.grant_lease(self.ttl_s)
        await self.store.put(self.key, self.record.model_dump_json().encode(), lease=lease)
        self.lease = lease
        self.registrations += 1

    async def start(self) -> None:
        """Register now (raising StateStoreError on failure) and keep the lease alive."""
        await self._register()
        self._task = asyncio.get_running_loop().create_task(self._keep_alive())

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                if self.lease is None:
                    await self._register()
                else:
                    await self.store.refresh_lease(self.lease)
            except StateStoreError as exc:
                # An expired lease took the record with it: register again on the next tick.
                log.warning(
                    "host %s: lease refresh failed (%s); re-registering", self.record.name, exc
                )
                self.lease = None

    async def stop(self) -> None:
        """Stop refreshing and delete the registration at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        lease, self.lease = self.lease, None
        if lease is not None:
            with contextlib.suppress(StateStoreError):
                await self.store.revoke_lease(lease)


async def list_hosts(store: StateStore) -> list[HostRecord]:
    """Every registered (live) host, sorted by name; unreadable records are skipped."""
    hosts = []
    for kv in await store.get_prefix(HOSTS_PREFIX):
        try:
            hosts.append(HostRecord.model_validate_json(kv.value))
        except ValidationError:
            log.warning("ignoring an unreadable host record at %s", kv.key)
    return hosts
