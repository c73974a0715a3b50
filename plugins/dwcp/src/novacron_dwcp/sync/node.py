"""Anti-entropy between regions over HTTP: every ``interval_s`` each node exchanges deltas
with every peer (push-pull, one round trip), and measures how stale what it merged was.

``POST /v1/sync/exchange`` takes ``{node, seen, delta}`` (the caller's watermarks and what
it believes we lack) and answers ``{node, seen, delta}`` (what the caller lacks). The route
is a FastAPI router, so an agent can mount it next to its control API; :meth:`SyncNode.serve`
runs it alone with uvicorn.

Staleness of an item = the wall time at which this node merged it minus the wall time of
the HLC timestamp of the write (both clocks are the regions' system clocks; keep them in
NTP sync). Bound: with full-mesh exchanges, an item reaches every peer within one interval
plus one round trip, as long as the peer is reachable. Each peer has its own loop, so an
unreachable peer (whose exchanges wait out ``timeout_s``) does not slow the others down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Generator, Mapping
from typing import Any

import httpx
import uvicorn
from fastapi import APIRouter, FastAPI, HTTPException
from pydantic import BaseModel

from novacron_dwcp.sync.crdt import (
    DeltaError,
    Replica,
    Watermarks,
    decode_delta,
    decode_seen,
    encode_seen,
)
from novacron_dwcp.sync.hlc import Timestamp, wall_ms

log = logging.getLogger(__name__)

EXCHANGE_PATH = "/v1/sync/exchange"


def _QuietServer(config: Any) -> Any:  # noqa: N802 - stands for a class
    """uvicorn's Server without signal capture: the process owning the loop handles signals."""

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            yield

    return Server(config)


class ExchangeMessage(BaseModel):
    """One side of an exchange."""

    node: str
    seen: dict[str, list[int | str]]
    delta: dict[str, Any]


class SyncNode:
    """One region's replica, its peers (name -> base URL) and its anti-entropy loop."""

    def __init__(
        self,
        name: str,
        peers: Mapping[str, str] | None = None,
        *,
        interval_s: float = 1.0,
        timeout_s: float = 5.0,
        full_every: int = 30,
    ) -> None:
        self.name = name
        self.peers = dict(peers or {})
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.full_every = full_every
        self.replica = Replica(name, on_merge=self._record_staleness)
        self.staleness_s: list[float] = []
        self.staleness_by_origin: dict[str, list[float]] = {}
        """The same samples, split by the region that made the write."""
        self.exchanges = 0
        self.failures: dict[str, int] = {}
        self._peer_seen: dict[str, Watermarks] = {}
        self._rounds: dict[str, int] = {}
        self._http = httpx.AsyncClient()
        self._tasks: list[asyncio.Task[None]] = []
        self._server: Any = None
        self._server_task: asyncio.Task[None] | None = None
        self.url = ""

    def _record_staleness(self, ts: Timestamp) -> None:
        staleness = max(0.0, (wall_ms() - ts.wall_ms) / 1000)
        self.staleness_s.append(staleness)
        self.staleness_by_origin.setdefault(ts.node, []).append(staleness)

    def handle(self, message: ExchangeMessage) -> ExchangeMessage:
        """Serve one exchange: merge the caller's delta, answer with what it lacks.

        The whole delta and the watermarks are decoded and checked before anything is
        merged; a malformed message raises :class:`DeltaError` and changes nothing.
        """
        caller_seen = decode_seen(message.seen)
        delta = decode_delta(message.delta)
        self.replica.merge(delta, caller_seen)
        self._peer_seen[message.node] = caller_seen
        return ExchangeMessage(
            node=self.name,
            seen=encode_seen(self.replica.seen),
            delta=self.replica.delta(caller_seen),
        )

    def router(self) -> APIRouter:
        """The exchange route, to mount on an existing FastAPI app."""
        router = APIRouter()

        @router.post(EXCHANGE_PATH)
        async def exchange(message: ExchangeMessage) -> ExchangeMessage:
            try:
                return self.handle(message)
            except DeltaError as exc:
                log.warning("sync %s: rejected exchange from %s: %s", self.name, message.node, exc)
                raise HTTPException(
                    status_code=422, detail=f"malformed sync exchange, nothing merged: {exc}"
                ) from exc

        return router

    async def exchange_with(self, peer: str) -> bool:
        """One push-pull exchange with ``peer``; False (counted in ``failures``, logged) when
        it is unreachable or its reply is malformed (then nothing of the reply is merged)."""
        rounds = self._rounds.get(peer, 0)
        self._rounds[peer] = rounds + 1
        full = self.full_every > 0 and rounds % self.full_every == 0
        assumed: Watermarks = {} if full else self._peer_seen.get(peer, {})
        request = ExchangeMessage(
            node=self.name, seen=encode_seen(self.replica.seen), delta=self.replica.delta(assumed)
        )
        try:
            response = await self._http.post(
                self.peers[peer] + EXCHANGE_PATH,
                content=request.model_dump_json(),
                headers={"Content-Type": "application/json"},
                timeout=self.timeout_s,
            )
            response.raise_for_status()
        except httpx.HTTPError as exc:
            self.failures[peer] = self.failures.get(peer, 0) + 1
            log.debug("sync %s -> %s failed: %r", self.name, peer, exc)
            return False
        try:
            reply = ExchangeMessage.model_validate_json(response.content)
            peer_seen = decode_seen(reply.seen)
            delta = decode_delta(reply.delta)
        except ValueError as exc:  # pydantic's ValidationError and DeltaError
            self.failures[peer] = self.failures.get(peer, 0) + 1
            log.warning("sync %s -> %s: malformed reply ignored: %s", self.name, peer, exc)
            return False
        self.replica.merge(delta, peer_seen)
        self._peer_seen[peer] = peer_seen
        self.exchanges += 1
        return True

    async def sync_once(self) -> int:
        """Exchange with every peer at once; how many answered."""
        results = await asyncio.gather(*(self.exchange_with(p) for p in self.peers))
        return sum(results)

    async def _loop(self, peer: str) -> None:
        while True:
            try:
                await self.exchange_with(peer)
            except Exception:  # a bug must not end this peer's anti-entropy for good
                self.failures[peer] = self.failures.get(peer, 0) + 1
                log.exception("sync %s -> %s: exchange failed unexpectedly", self.name, peer)
            await asyncio.sleep(self.interval_s)

    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve the exchange route with uvicorn; returns the base URL."""
        app = FastAPI()
        app.include_router(self.router())
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
        self._server = _QuietServer(config)
        self._server_task = asyncio.get_running_loop().create_task(self._server.serve())
        while not self._server.started:
            if self._server_task.done():
                await self._server_task
                msg = f"sync node {self.name} could not listen on {host}:{port}"
                raise OSError(msg)
            await asyncio.sleep(0.01)
        bound = self._server.servers[0].sockets[0].getsockname()
        self.url = f"http://{bound[0]}:{bound[1]}"
        return self.url

    def start(self) -> None:
        """Start the anti-entropy loops (one per peer)."""
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._loop(peer)) for peer in self.peers]

    async def close(self) -> None:
        """Stop the loops, the server and the HTTP client (each even if another step fails)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                log.warning("sync %s: a peer loop had ended with %r", self.name, result)
        try:
            if self._server is not None and self._server_task is not None:
                self._server.should_exit = True
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(self._server_task, 5)
        finally:
            await self._http.aclose()
