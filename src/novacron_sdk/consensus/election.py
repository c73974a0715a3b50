"""Leader election over any :class:`~novacron_sdk.consensus.interface.StateStore`.

The leader is whoever holds the key ``<prefix><name>``: it is created only if absent (a
transaction comparing its version with 0), under a lease that a keep-alive task refreshes
every third of the ttl. When the leader dies its lease expires and the key is deleted;
waiting candidates watch the key and try again on its deletion. The store's transactions
make sure two candidates never both win.

A leader also keeps a local deadline: the event-loop time just before it sent the lease's
grant (or its last acknowledged refresh), plus the ttl minus a safety margin. The store
cannot expire the lease before then, so :attr:`Election.is_leader` is False from that
deadline on, even while a refresh is still waiting for an answer: a leader cut off from the
store stops leading before another candidate can be elected. :attr:`Election.term` (the
election key's create revision) grows with every won election: pass it along with the
leader's writes as a fencing token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from novacron_sdk.consensus.interface import Compare, Op, StateStore
from novacron_sdk.errors import StateStoreError

log = logging.getLogger(__name__)

ELECTION_PREFIX = "/novacron/election/"
_MARGIN_FRACTION = 0.1
_MARGIN_MAX_S = 0.5


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
        self._term: int | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadline = 0.0

    @property
    def lease_s(self) -> float:
        """How long leadership lasts locally after a refresh was sent: the ttl minus a margin."""
        return self.ttl_s - min(_MARGIN_MAX_S, self.ttl_s * _MARGIN_FRACTION)

    @property
    def is_leader(self) -> bool:
        """True from a won campaign until resign(), a failed lease refresh, or the local lease
        deadline (ttl after the last acknowledged refresh was sent, minus a margin)."""
        return (
            self._lease is not None
            and not self._lost.is_set()
            and self._loop is not None
            and self._loop.time() < self._deadline
        )

    @property
    def term(self) -> int | None:
        """The election key's create revision while leading (a fencing token), else None."""
        return self._term if self.is_leader else None

    async def wait_lost(self) -> None:
        """Return when leadership is lost (lease expired, deadline passed) or given up."""
        await self._lost.wait()

    async def campaign(self) -> None:
        """Become the leader, waiting (by watching the key) while someone else is."""
        if self.is_leader:
            return
        value = self.candidate_id.encode()
        loop = asyncio.get_running_loop()
        while True:
            sent = loop.time()
            lease = await self.store.grant_lease(self.ttl_s)
            try:
                result = await self.store.txn(
                    [Compare(key=self.key, target="version", op="==", value=0)],
                    [Op(kind="put", key=self.key, value=value, lease=lease)],
                    [Op(kind="get", key=self.key)],
                )
            except BaseException:
                # Cancelled (an agent stopping) or failed while the claim was in flight: it
                # may still apply, and no one would keep its lease alive or know it leads, so
                # nobody could lead for a whole ttl. Revoking the lease withdraws the claim
                # whichever comes first (a claim on a revoked lease fails).
                await asyncio.shield(loop.create_task(self._revoke_quietly(lease)))
                raise
            if result.succeeded:
                self._won(lease, sent + self.lease_s, result.revision)
                return
            with contextlib.suppress(StateStoreError):
                await self.store.revoke_lease(lease)
            holder = result.responses[0] if result.responses else ()
            if holder:
                try:
                    await self._wait_for_delete(result.revision)
                except StateStoreError as exc:
                    if "compacted" not in str(exc):
                        raise
                    # History moved on while we watched: read the key again.
                    log.info("election %r: watch restarted (%s)", self.name, exc)

    async def _revoke_quietly(self, lease: int) -> None:
        with contextlib.suppress(StateStoreError):
            await self.store.revoke_lease(lease)

    def _won(self, lease: int, deadline: float, term: int) -> None:
        self._lease = lease
        self._term = term
        self._loop = asyncio.get_running_loop()
        self._deadline = deadline
        self._lost.clear()
        self._keepalive = self._loop.create_task(self._keep_alive(lease))
        log.info("%s leads election %r (term %d)", self.candidate_id, self.name, term)

    async def _wait_for_delete(self, read_revision: int) -> None:
        # From the revision after the read that saw the holder: a deletion after that read is
        # still in the store's history, and that history is recent (the holder's own
        # revision may have been compacted long ago).
        async for event in self.store.watch(self.key, start_revision=read_revision + 1):
            if event.key == self.key and event.kind == "delete":
                return

    async def _keep_alive(self, lease: int) -> None:
        loop = asyncio.get_running_loop()
        interval = self.ttl_s / 3
        while True:
            await asyncio.sleep(interval)
            sent = loop.time()
            remaining = self._deadline - sent
            reason = "the lease ran out before a refresh could be sent"
            if remaining > 0:
                try:
                    await asyncio.wait_for(self.store.refresh_lease(lease), remaining)
                except StateStoreError as exc:
                    reason = str(exc)
                except TimeoutError:
                    reason = f"no lease refresh was acknowledged within the ttl ({self.ttl_s} s)"
                else:
                    self._deadline = sent + self.lease_s
                    continue
            log.warning("%s lost election %r: %s", self.candidate_id, self.name, reason)
            self._lost.set()
            return

    async def leader(self) -> str | None:
        """The current leader's candidate id, or None when nobody leads."""
        kv = await self.store.get(self.key)
        if kv is None:
            return None
        try:
            return kv.value.decode()
        except UnicodeDecodeError as exc:
            msg = (
                f"the election key {self.key!r} holds {len(kv.value)} bytes that are not a "
                f"candidate id (not UTF-8: {exc}); something other than an election wrote it: "
                f"delete the key {self.key!r} from the state store (the next campaign recreates it)"
            )
            raise StateStoreError(msg) from exc

    async def resign(self) -> None:
        """Give up leadership (deleting the key at once); a no-op when not leading."""
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
            self._keepalive = None
        lease, self._lease = self._lease, None
        self._term = None
        if lease is not None:
            with contextlib.suppress(StateStoreError):
                await self.store.revoke_lease(lease)
        self._lost.set()
