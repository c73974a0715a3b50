"""The contract every transport must pass: subclass :class:`TransportContract`, give a fixture.

Example::

    class TestTcpContract(TransportContract):
        @pytest.fixture
        def transport(self) -> Transport:
            return TcpTransport()

Everything runs on 127.0.0.1. The receiving side of the oversized-frame test is built from
the ``small_frame_transport`` fixture: by default the same class with the setting
``max_frame_bytes`` lowered; override the fixture if your transport names it differently.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from novacron_sdk.errors import FrameError, TransportError
from novacron_sdk.transport.interface import Channel, Endpoint, Listener, Transport

SMALL_MAX_FRAME = 64 * 1024
"""The receive limit of ``small_frame_transport``."""


@asynccontextmanager
async def channel_pair(
    client_side: Transport, server_side: Transport | None = None
) -> AsyncIterator[tuple[Channel, Channel]]:
    """A connected (client, server) pair on loopback; both ends and the listener are closed."""
    accepted: asyncio.Queue[Channel] = asyncio.Queue()

    async def handler(channel: Channel) -> None:
        await accepted.put(channel)

    listener = await (server_side or client_side).listen(Endpoint(host="127.0.0.1"), handler)
    client: Channel | None = None
    server: Channel | None = None
    try:
        client = await client_side.connect(listener.endpoint, timeout=10)
        server = await asyncio.wait_for(accepted.get(), timeout=10)
        yield client, server
    finally:
        for channel in (client, server):
            if channel is not None:
                await channel.close()
        await listener.close()


def _frames(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.choice((0, 1, 17, 1000, 70_000))) for _ in range(count)]


class TransportContract:
    """Every transport must pass this. Subclass it and provide a ``transport`` fixture."""

    @pytest.fixture
    def small_frame_transport(self, transport: Transport) -> Transport:
        """The same transport, accepting frames of at most SMALL_MAX_FRAME bytes."""
        return type(transport)({**transport.settings, "max_frame_bytes": SMALL_MAX_FRAME})

    async def test_ordered_delivery_both_ways(self, transport: Transport) -> None:
        """Many frames of mixed sizes arrive complete and in order, in both directions."""
        up, down = _frames(300, seed=1), _frames(300, seed=2)
        async with channel_pair(transport) as (client, server):

            async def pump(channel: Channel, frames: list[bytes]) -> None:
                for frame in frames:
                    await channel.send(frame)
                await channel.drain()

            async def collect(channel: Channel, n: int) -> list[bytes]:
                return [await channel.recv() for _ in range(n)]

            _, _, got_up, got_down = await asyncio.gather(
                pump(client, up),
                pump(server, down),
                collect(server, len(up)),
                collect(client, len(down)),
            )
        assert got_up == up
        assert got_down == down

    async def test_large_frames(self, transport: Transport) -> None:
        """Frames of several MiB arrive intact."""
        frames = [os.urandom(4 * 1024 * 1024 + 3), os.urandom(8 * 1024 * 1024)]
        async with channel_pair(transport) as (client, server):
            sender = asyncio.create_task(_send_all(client, frames))
            received = [await server.recv() for _ in frames]
            await sender
        assert received == frames

    async def test_empty_frame(self, transport: Transport) -> None:
        """An empty frame is a frame: it arrives as b"" and keeps its place in the order."""
        async with channel_pair(transport) as (client, server):
            for frame in (b"", b"x", b""):
                await client.send(frame)
            assert [await server.recv() for _ in range(3)] == [b"", b"x", b""]

    async def test_many_channels_on_one_listener(self, transport: Transport) -> None:
        """Concurrent peers of one listener each get their own, separate channel."""

        async def echo(channel: Channel) -> None:
            try:
                while True:
                    await channel.send(await channel.recv())
            except TransportError:
                await channel.close()

        listener = await transport.listen(Endpoint(host="127.0.0.1"), echo)
        try:

            async def client(i: int) -> list[bytes]:
                channel = await transport.connect(listener.endpoint, timeout=10)
                try:
                    out = []
                    for j in range(5):
                        await channel.send(f"client {i} frame {j}".encode())
                        out.append(await channel.recv())
                    return out
                finally:
                    await channel.close()

            results = await asyncio.gather(*(client(i) for i in range(25)))
        finally:
            await listener.close()
        for i, frames in enumerate(results):
            assert frames == [f"client {i} frame {j}".encode() for j in range(5)]

    async def test_oversized_frame_rejected_by_receiver(
        self, transport: Transport, small_frame_transport: Transport
    ) -> None:
        """A frame over the receiver's limit raises FrameError there, without being buffered."""
        size = 16 * SMALL_MAX_FRAME
        async with channel_pair(transport, small_frame_transport) as (client, server):
            await client.send(b"fits")
            assert await server.recv() == b"fits"
            big = os.urandom(size)
            await client.send(big)
            tracemalloc.start()
            try:
                with pytest.raises(FrameError):
                    await asyncio.wait_for(server.recv(), timeout=10)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert peak < size // 2, f"receiver allocated {peak} bytes for a rejected frame"
            with pytest.raises(TransportError):
                await server.recv()

    async def test_peer_close_raises_transport_error(self, transport: Transport) -> None:
        """Frames sent before a clean close arrive; then recv raises TransportError."""
        async with channel_pair(transport) as (client, server):
            await client.send(b"last words")
            await client.drain()
            await client.close()
            assert await server.recv() == b"last words"
            with pytest.raises(TransportError) as info:
                await asyncio.wait_for(server.recv(), timeout=10)
            assert not isinstance(info.value, FrameError)

    async def test_stats_count_payload_bytes(self, transport: Transport) -> None:
        """Stats count frames and payload bytes on both ends; wire bytes include overhead."""
        frames = _frames(40, seed=3)
        async with channel_pair(transport) as (client, server):
            await _send_all(client, frames)
            for _ in frames:
                await server.recv()
            sent, received = client.stats(), server.stats()
        payload = sum(len(f) for f in frames)
        assert sent.transport == received.transport == transport.name
        assert (sent.frames_sent, sent.payload_bytes_sent) == (len(frames), payload)
        assert (received.frames_received, received.payload_bytes_received) == (
            len(frames),
            payload,
        )
        assert sent.wire_bytes_sent > payload
        assert received.wire_bytes_received > payload
        assert sent.elapsed_s > 0

    async def test_close_is_idempotent(self, transport: Transport) -> None:
        """close() twice is fine; sending on a closed channel raises TransportError."""
        async with channel_pair(transport) as (client, _server):
            await client.close()
            await client.close()
            with pytest.raises(TransportError):
                await client.send(b"too late")

    async def test_listener_reports_real_port(self, transport: Transport) -> None:
        """Listening on port 0 reports the port the OS chose."""

        async def ignore(channel: Channel) -> None:
            await channel.close()

        listener: Listener = await transport.listen(Endpoint(host="127.0.0.1", port=0), ignore)
        try:
            assert listener.endpoint.port > 0
        finally:
            await listener.close()

    async def test_connect_to_nothing_raises_transport_error(self, transport: Transport) -> None:
        """Connecting where nobody listens raises TransportError naming the address."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with pytest.raises(TransportError, match=str(port)):
            await transport.connect(Endpoint(host="127.0.0.1", port=port), timeout=5)


async def _send_all(channel: Channel, frames: list[bytes]) -> None:
    for frame in frames:
        await channel.send(frame)
    await channel.drain()
