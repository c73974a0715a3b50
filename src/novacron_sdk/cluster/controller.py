"""The cluster controller: one agent elected (consensus/election.py) to do cluster-wide work.

Every agent runs a :class:`ClusterController`; it campaigns, and while it leads it runs
``on_elected`` (cancelled when leadership is lost). After losing, or after a store error,
it campaigns again. When ``on_elected`` raises, the error is logged and the role given up
(a leader that does no work would keep the others from doing it); the candidate campaigns
again after a second. Whoever leads is readable by anyone with :func:`current_controller`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from novacron_sdk.cluster.keys import CONTROLLER_ELECTION
from novacron_sdk.consensus.election import Election
from novacron_sdk.consensus.interface import StateStore
from novacron_sdk.errors import StateStoreError

log = logging.getLogger(__name__)

LeaderWork = Callable[[], Coroutine[Any, Any, None]]
_RETRY_S = 1.0


class ClusterController:
    """Campaigns for the controller role as ``candidate_id`` until :meth:`stop`."""

    def __init__(
        self,
        store: StateStore,
        candidate_id: str,
        *,
        ttl_s: float = 10.0,
        on_elected: LeaderWork | None = None,
    ) -> None:
        self.store = store
        self.candidate_id = candidate_id
        self.ttl_s = ttl_s
        self.on_elected = on_elected
        self.election = Election(store, CONTROLLER_ELECTION, candidate_id, ttl_s=ttl_s)
        self.terms = 0
        self._task: asyncio.Task[None] | None = None
        self._leading = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        """Whether this candidate leads now."""
        return self.election.is_leader

    async def wait_leading(self) -> None:
        """Return once this candidate leads."""
        await self._leading.wait()

    def start(self) -> None:
        """Start campaigning in the background."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.election.campaign()
            except StateStoreError as exc:
                log.warning("controller campaign of %s failed: %s", self.candidate_id, exc)
                await asyncio.sleep(_RETRY_S)
                continue
            self.terms += 1
            self._leading.set()
            try:
                work_failed = await self._lead()
            finally:
                self._leading.clear()
            if work_failed:
                # Give the other candidates a chance to take the role before trying again.
                await asyncio.sleep(_RETRY_S)

    async def _lead(self) -> bool:
        """Lead until leadership is lost or ``on_elected`` raises; True when it raised.

        When the work raises, the role is given up (resign): holding it while doing nothing
        would keep every other candidate from doing the work.
        """
        loop = asyncio.get_running_loop()
        lost = loop.create_task(self.election.wait_lost())
        work = loop.create_task(self.on_elected()) if self.on_elected is not None else None
        failed = False
        try:
            pending: set[asyncio.Future[None]] = {lost}
            if work is not None:
                pending.add(work)
            while not lost.done():
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if work is not None and work in done and not work.cancelled():
                    error = work.exception()
                    if error is not None:
                        failed = True
                        log.error(
                            "the cluster controller work of %s failed; giving up the role: %r",
                            self.candidate_id,
                            error,
                            exc_info=error,
                        )
                        await self.election.resign()
                        break
        finally:
            for task in (lost, work):
                if task is not None and not task.done():
                    task.cancel()
            tasks = [t for t in (lost, work) if t is not None]
            # Wait without raising what the tasks raise: a failure of the work must not end
            # the campaign; a cancellation of this task still propagates.
            await asyncio.wait(tasks)
            if not failed and work is not None and not work.cancelled() and work.exception():
                log.error(
                    "the cluster controller work of %s raised when stopped: %r",
                    self.candidate_id,
                    work.exception(),
                )
        log.warning("%s is no longer the cluster controller", self.candidate_id)
        return failed

    async def stop(self) -> None:
        """Stop campaigning and give up the role if held."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._leading.clear()
        await self.election.resign()


async def current_controller(store: StateStore) -> str | None:
    """The candidate id of the current controller, or None when nobody leads."""
    return await Election(store, CONTROLLER_ELECTION, "reader").leader()
