"""The cluster controller: one agent elected (consensus/election.py) to do cluster-wide work.

Every agent runs a :class:`ClusterController`; it campaigns, and while it leads it runs
``on_elected`` (cancelled when leadership is lost). After losing, or after a store error,
it campaigns again. Whoever leads is readable by anyone with :func:`current_controller`.
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
            await self._lead()
            self._leading.clear()

    async def _lead(self) -> None:
        work = (
            asyncio.get_running_loop().create_task(self.on_elected())
            if self.on_elected is not None
            else None
        )
        try:
            await self.election.wait_lost()
        finally:
            if work is not None:
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
        log.warning("%s is no longer the cluster controller", self.candidate_id)

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
