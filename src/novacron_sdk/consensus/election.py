"""Leader election over any :class:`~novacron_sdk.consensus.interface.StateStore`.

The leader is whoever holds the key ``<prefix><name>``: it is created only if absent (a
transaction comparing its version with 0), under a lease that a keep-alive task refreshes
every third of the ttl. When the leader dies its lease expires and the key is deleted;
waiting candidates watch the key and try again on its deletion. The store's transactions
make sure two candidates never both win.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from novacron_sdk.consensus.interface import Compare, KeyValue, Op, StateStore
from novacron_sdk.errors import StateStoreError

log = logging.getLogger(__name__)

ELECTION_PREFIX = "/novacron/election/"


class Election:
    """One candidate in the election ``name``; ``campaign()`` returns once it leads."""

    def __init__(
        self, store: StateStore, name: str, candidate_id: str, ttl_s: float = 10.0
    ) -> None:
        if not ttl_s > 0:
            msg = f"election ttl must be positive, got {ttl_s}"
            raise StateStoreError(msg)
        self.store = store
        self.name = name
        self.candidate_id = candidate_id
        self.ttl_s = ttl_s
        self.key = f"{ELECTION_PREFIX}{name}"
        self._lease: int | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        """True from a won campaign until resign() or a failed lease refresh."""
        return self._lease is not None and not self._lost.is_set()

    async def wait_lost(self) -> None:
        """Return when leadership is lost (lease expired) or given up."""
        await self._lost.wait()

    async def campaign(self) -> None:
        """Become the leader, waiting (by watching the key) while someone else is."""
        if self.is_leader:
            return
        value = self.candidate_id.encode()
        while True:
            lease = await self.store.grant_lease(self.ttl_s)
            result = await self.store.txn(
                [Compare(key=self.key, target="version", op="==", value=0)],
                [Op(kind="put", key=self.key, value=value, lease=lease)],
                [Op(kind="get", key=self.key)],
            )
            if result.succeeded:
                self._won(lease)
                return
            with contextlib.suppress(StateStoreError):
                await self.store.revoke_lease(lease)
            holder = result.responses[0] if result.responses else ()
            if holder:
                await self._wait_for_delete(holder[0])

    def _won(self, lease: int) -> None:
        self._lease = lease
        self._lost.clear()
        self._keepalive = asyncio.get_running_loop().create_task(self._keep_alive(lease))
        log.info("%s leads election %r", self.candidate_id, self.name)

    async def _wait_for_delete(self, holder: KeyValue) -> None:
        # From the holder's own revision on, so a deletion that happens before the watch
        # starts is still seen in the store's history.
        async for event in self.store.watch(self.key, start_revision=holder.mod_revision + 1):
            if event.key == self.key and event.kind == "delete":
                return

    async def _keep_alive(self, lease: int) -> None:
        interval = self.ttl_s / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self.store.refresh_lease(lease)
            except StateStoreError as exc:
                log.warning("%s lost election %r: %s", self.candidate_id, self.name, exc)
                self._lost.set()
                return

    async def leader(self) -> str | None:
        """The current leader's candidate id, or None when nobody leads."""
        kv = await self.store.get(self.key)
        return kv.value.decode() if kv is not None else None

    async def resign(self) -> None:
        """Give up leadership (deleting the key at once); a no-op when not leading."""
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
            self._keepalive = None
        lease, self._lease = self._lease, None
        if lease is not None:
            with contextlib.suppress(StateStoreError):
                await self.store.revoke_lease(lease)
        self._lost.set()
