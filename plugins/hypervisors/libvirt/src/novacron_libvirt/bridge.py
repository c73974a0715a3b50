"""Carry QEMU's migration stream over a NovaCron transport: unix socket <-> channel, both ways.

The source QEMU connects to a unix socket where :class:`StreamBridgeSource` listens; every
connection it opens (the main migration channel, then one per multifd channel) is carried by
its own transport channel to :class:`StreamBridgeSink` at the destination, which connects
to the destination QEMU's incoming unix socket. QEMU 7.2 takes the *first* connection that
arrives as the main channel, so the sink connects in the order the source accepted:
connection ``n`` is opened only after connections ``0..n-1`` are.

Frames on a channel: ``H`` + JSON hello (first frame, source to sink: session and index),
``D`` + bytes (stream data, either direction), ``E`` (that direction has ended: half-close).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from novacron_sdk.errors import TransportError
from novacron_sdk.transport.interface import Channel, Endpoint, Listener, Transport

logger = logging.getLogger(__name__)

CHUNK_BYTES = 256 * 1024
CONNECT_PATIENCE_S = 30.0
_HELLO, _DATA, _END = b"H", b"D", b"E"


@dataclass
class BridgeStats:
    """Bytes carried by a bridge end (payload only, without frame headers)."""

    connections: int = 0
    bytes_to_destination: int = 0
    bytes_from_destination: int = 0


class StreamBridgeSource:
    """Source end: QEMU connects to ``socket_path``; each connection goes over a channel."""

    def __init__(
        self, transport: Transport, endpoint: Endpoint, socket_path: Path, session: str
    ) -> None:
        self.transport = transport
        self.endpoint = endpoint
        self.socket_path = socket_path
        self.session = session
        self.stats = BridgeStats()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.errors: list[BaseException] = []

    async def start(self) -> None:
        """Listen on the unix socket (QEMU, possibly another uid, must be able to connect)."""
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._server = await asyncio.start_unix_server(self._accept, path=str(self.socket_path))
        # QEMU may run as another (unprivileged) uid; a socket needs write access to connect.
        self.socket_path.chmod(0o666)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Numbered before the first await: connection callbacks start in accept order.
        index = self.stats.connections
        self.stats.connections += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            channel = await self.transport.connect(self.endpoint)
            hello = json.dumps({"session": self.session, "index": index}).encode()
            await channel.send(_HELLO + hello)
            await _pump(reader, writer, channel, self.stats, outbound=True)
        except Exception as exc:
            logger.warning("migration connection %d failed at the source bridge: %s", index, exc)
            self.errors.append(exc)
            writer.close()
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def close(self) -> None:
        """Stop listening and wait for the connections to finish. Safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=10)


class StreamBridgeSink:
    """Destination end: each channel is connected, in source order, to QEMU's socket."""

    def __init__(
        self, transport: Transport, endpoint: Endpoint, socket_path: Path, session: str
    ) -> None:
        self.transport = transport
        self.requested = endpoint
        self.socket_path = socket_path
        self.session = session
        self.stats = BridgeStats()
        self.errors: list[BaseException] = []
        self._listener: Listener | None = None
        self._connected = 0
        self._failed = False
        self._turn = asyncio.Condition()

    @property
    def endpoint(self) -> Endpoint:
        """Where the source bridge connects (the real port once started)."""
        if self._listener is None:
            msg = "the stream bridge sink is not started"
            raise TransportError(msg)
        return self._listener.endpoint

    async def start(self) -> None:
        """Start accepting channels."""
        self._listener = await self.transport.listen(self.requested, self._on_channel)

    async def _on_channel(self, channel: Channel) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            hello = await channel.recv()
            index = self._check_hello(hello)
            async with self._turn:
                await self._turn.wait_for(lambda: self._failed or self._connected == index)
                if self._failed:
                    msg = f"an earlier migration connection failed; dropping connection {index}"
                    raise TransportError(msg)
                reader, writer = await _connect_unix(self.socket_path)
                self._connected += 1
                self.stats.connections += 1
                self._turn.notify_all()
            await _pump(reader, writer, channel, self.stats, outbound=False)
        except Exception as exc:
            logger.warning("migration connection failed at the sink bridge: %s", exc)
            self.errors.append(exc)
            async with self._turn:
                self._failed = True
                self._turn.notify_all()
            if writer is not None:
                writer.close()
            await channel.close()

    def _check_hello(self, frame: bytes) -> int:
        if frame[:1] != _HELLO:
            msg = "the first frame of a migration channel must be its hello"
            raise TransportError(msg)
        hello = json.loads(frame[1:])
        if hello.get("session") != self.session:
            got = hello.get("session")
            msg = f"migration channel for session {got!r}, expected {self.session!r}"
            raise TransportError(msg)
        return int(hello["index"])

    async def close(self) -> None:
        """Stop accepting channels. Safe to call twice."""
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()


async def _connect_unix(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to QEMU's incoming socket, which may appear a moment after prepare."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CONNECT_PATIENCE_S
    while True:
        try:
            return await asyncio.open_unix_connection(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.02)


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    channel: Channel,
    stats: BridgeStats,
    *,
    outbound: bool,
) -> None:
    """Copy socket -> channel and channel -> socket until both directions ended."""
    sent_end = asyncio.Event()

    async def socket_to_channel() -> None:
        while data := await reader.read(CHUNK_BYTES):
            await channel.send(_DATA + data)
            if outbound:
                stats.bytes_to_destination += len(data)
            else:
                stats.bytes_from_destination += len(data)
        await channel.send(_END)
        sent_end.set()

    async def channel_to_socket() -> None:
        while True:
            try:
                frame = await channel.recv()
            except TransportError:
                if sent_end.is_set():  # the peer closed after both sides ended
                    return
                raise
            if frame[:1] == _END:
                if writer.can_write_eof():
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                return
            writer.write(frame[1:])
            await writer.drain()
            if outbound:
                stats.bytes_from_destination += len(frame) - 1
            else:
                stats.bytes_to_destination += len(frame) - 1

    try:
        await asyncio.gather(socket_to_channel(), channel_to_socket())
    finally:
        await channel.drain()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        await channel.close()
