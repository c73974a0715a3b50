"""Host registration under a lease: a host's record disappears when its agent stops refreshing.

An agent calls :meth:`HostMembership.start`; a background task refreshes the lease every
third of its ttl. If the lease expired anyway (the agent was paused, the store unreachable
for longer than the ttl), the task registers the host again under a new lease.

A host name belongs to one agent. Registering a name whose record another process holds
under a live lease waits for that lease to expire (an earlier run of this agent that died
without deregistering) and refuses with ConfigError if it does not (another running agent
with the same ``agent.name``). An earlier run on the same machine with the same URL is taken
over at once: no other live process can listen on that URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from novacron_sdk.cluster.keys import HOSTS_PREFIX, host_key
from novacron_sdk.consensus.interface import Compare, Op, StateStore
from novacron_sdk.errors import ConfigError, StateStoreError

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
    instance: str | None = Field(default=None, description="The registering process (random).")
    machine: str | None = Field(default=None, description="The registering machine's hostname.")
    lease_ttl_s: float | None = Field(default=None, description="The ttl of its lease.")


_TAKEOVER_BUDGET_S = 20.0
"""Longest wait for another process's lease on our host name (init components get 30 s)."""


class HostMembership:
    """Keeps ``record`` registered in ``store`` under a lease of ``ttl_s`` seconds."""

    def __init__(self, store: StateStore, record: HostRecord, *, ttl_s: float = 10.0) -> None:
        if not ttl_s > 0:
            msg = f"host lease ttl must be positive, got {ttl_s}"
            raise StateStoreError(msg)
        self.store = store
        self.record = record.model_copy(
            update={
                "instance": record.instance or uuid.uuid4().hex,
                "machine": record.machine or socket.gethostname(),
                "lease_ttl_s": ttl_s,
            }
        )
        self.ttl_s = ttl_s
        self.lease: int | None = None
        self.registrations = 0
        self._task: asyncio.Task[None] | None = None
        self._warned_about: tuple[str | None, str | None] | None = None

    @property
    def key(self) -> str:
        """The host's key in the store."""
        return host_key(self.record.name)

    def _may_replace(self, holder: HostRecord | None) -> bool:
        """Whether a live record of our name is ours to overwrite: this process's own, an
        earlier run of this agent (same machine and URL), or unreadable."""
        if holder is None or holder.instance == self.record.instance:
            return True
        mine = self.record
        return mine.url is not None and (holder.machine, holder.url) == (mine.machine, mine.url)

    async def _try_register(self) -> HostRecord | None:
        """Register unless another live process holds the name; then return its record."""
        while True:
            kv = await self.store.get(self.key)
            if kv is None:
                compare = Compare(key=self.key, target="version", op="==", value=0)
            else:
                try:
                    holder: HostRecord | None = HostRecord.model_validate_json(kv.value)
                except ValidationError:
                    holder = None
                if holder is not None and not self._may_replace(holder):
                    return holder
                compare = Compare(
                    key=self.key, target="mod_revision", op="==", value=kv.mod_revision
                )
            lease = await self.store.grant_lease(self.ttl_s)
            put = Op(
                kind="put", key=self.key, value=self.record.model_dump_json().encode(), lease=lease
            )
            try:
                result = await self.store.txn([compare], [put])
            except BaseException:
                with contextlib.suppress(StateStoreError):
                    await self.store.revoke_lease(lease)
                raise
            if result.succeeded:
                self.lease = lease
                self.registrations += 1
                return None
            # The record changed between our read and our write: look again.
            with contextlib.suppress(StateStoreError):
                await self.store.revoke_lease(lease)

    async def start(self) -> None:
        """Register now and keep the lease alive.

        If another process holds the name under a live lease, wait for that lease to expire
        (at most its ttl and a margin, or 20 s); ConfigError if it does not. Store failures
        raise StateStoreError.
        """
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while (holder := await self._try_register()) is not None:
            ttl = holder.lease_ttl_s or self.ttl_s
            wait = ttl + max(1.0, ttl / 4)
            if deadline is None:
                deadline = loop.time() + min(wait, _TAKEOVER_BUDGET_S)
                log.warning(
                    "host name %r is registered by another agent (%s); waiting up to %.0f s "
                    "for its lease to expire, as it would if that was an earlier run of this one",
                    self.record.name,
                    _describe(holder),
                    deadline - loop.time(),
                )
            elif loop.time() >= deadline:
                raise ConfigError(
                    _name_taken(
                        self.record.name, holder, wait, waited_all=wait <= _TAKEOVER_BUDGET_S
                    )
                )
            await asyncio.sleep(min(0.5, self.ttl_s / 10))
        self._task = loop.create_task(self._keep_alive())

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                if self.lease is None:
                    holder = await self._try_register()
                    if holder is not None and self._warned_about != (holder.instance, holder.url):
                        self._warned_about = (holder.instance, holder.url)  # once per holder
                        log.warning(
                            "host %s: cannot register again, another agent (%s) holds the "
                            "name now; %s",
                            self.record.name,
                            _describe(holder),
                            _OWN_NAME,
                        )
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


_OWN_NAME = "give each agent its own agent.name (novacron agent --name)"


def _describe(holder: HostRecord) -> str:
    where = f"at {holder.url}" if holder.url else "without a URL"
    machine = f" on machine {holder.machine!r}" if holder.machine else ""
    return f"{where}{machine}"


def _name_taken(name: str, holder: HostRecord, wait: float, *, waited_all: bool) -> str:
    if waited_all:
        return (
            f"host name {name!r} is taken: another agent {_describe(holder)} registered it and "
            f"keeps its lease alive (it did not expire in {wait:.0f} s); {_OWN_NAME}"
        )
    return (
        f"host name {name!r} is held by another agent {_describe(holder)}, whose lease (ttl "
        f"{holder.lease_ttl_s or 0:.0f} s) did not expire in {_TAKEOVER_BUDGET_S:.0f} s; if that "
        f"agent runs, {_OWN_NAME}; if it was an earlier run of this one, start again once its "
        "lease has expired"
    )


async def list_hosts(store: StateStore) -> list[HostRecord]:
    """Every registered (live) host, sorted by name; unreadable records are skipped."""
    hosts = []
    for kv in await store.get_prefix(HOSTS_PREFIX):
        try:
            hosts.append(HostRecord.model_validate_json(kv.value))
        except ValidationError:
            log.warning("ignoring an unreadable host record at %s", kv.key)
    return hosts
