"""Shared fixtures of the DWCP plugin tests (transport_* and wan_* belong to the transport work)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest


class TcpRelay:
    """A TCP relay on 127.0.0.1 whose connections a test can cut, like a failing network.

    Every accepted connection is piped to the target; ``cut(i)`` resets the i-th live pair
    at both ends (RST), ``cut_all()`` resets them all. The relay keeps listening, so a
    client can reconnect through it.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        pair = (writer, up_writer)
        self.pairs.append(pair)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pipe(src, dst, pair))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while data := await src.read(256 * 1024):
                dst.write(data)
                await dst.drain()
            if dst.can_write_eof():
                dst.write_eof()
        except (ConnectionError, OSError):
            self._reset(pair)

    @staticmethod
    def _rst(writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    def _reset(self, pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter]) -> None:
        if pair in self.pairs:
            self.pairs.remove(pair)
        for writer in pair:
            self._rst(writer)

    def cut(self, index: int) -> None:
        """Reset one relayed connection (both ends)."""
        self._reset(self.pairs[index])

    def cut_all(self) -> None:
        """Reset every relayed connection, as an outage would."""
        for pair in list(self.pairs):
            self._reset(pair)

    async def close(self) -> None:
        self.cut_all()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


RelayFactory = Callable[[int], Awaitable[TcpRelay]]


@pytest.fixture
async def transport_relay() -> AsyncIterator[RelayFactory]:
    """``await transport_relay(port)``: a cuttable relay to 127.0.0.1:port, closed afterwards."""
    relays: list[TcpRelay] = []

    async def make(port: int) -> TcpRelay:
        relay = TcpRelay("127.0.0.1", port)
        await relay.start()
        relays.append(relay)
        return relay

    yield make
    for relay in relays:
        await relay.close()


# --- prediction_* and placement_* fixtures (owned by the prediction/placement work) ---------


def _prediction_shared_data(*parts):
    """``shared/data/<parts>`` beside the repository, as CI lays it out; skip when absent."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[3].parent.joinpath("shared", "data", *parts)
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path


@pytest.fixture
def prediction_traces_dir():
    """The shared Pensieve bandwidth traces."""
    return _prediction_shared_data("bandwidth", "pensieve-train")


@pytest.fixture
def placement_openb_dir():
    """The shared Alibaba openb GPU cluster trace."""
    return _prediction_shared_data("cluster", "alibaba-openb-2023")


# etcd_* and sync_* fixtures (the consensus and sync work): real etcd clusters and sync regions.
from novacron_dwcp.consensus.testing import (  # noqa: E402, F401 - fixtures, by name
    etcd_auth_cluster,
    etcd_cluster,
    etcd_fresh_cluster,
    etcd_store_factory,
    etcd_tls_cluster,
)
from novacron_dwcp.sync.testing import sync_regions  # noqa: E402, F401 - fixture, by name
