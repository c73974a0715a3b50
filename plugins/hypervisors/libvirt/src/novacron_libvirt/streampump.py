"""The byte pump of a stream bridge connection: unix socket <-> channel, both directions.

Frames: ``D`` + bytes (either direction, as they are), ``Z``/``R`` (source to sink, see
:mod:`novacron_libvirt.streamcodec`), ``E`` (that direction has ended: half-close).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from dataclasses import dataclass, field
from pathlib import Path

from novacron_libvirt.pagerefs import ReferenceIndex
from novacron_libvirt.streamcodec import CODEC_RAW, ChunkDecoder, LevelController, send_encoded
from novacron_sdk.errors import TransportError
from novacron_sdk.transport.interface import Channel

CHUNK_BYTES = 256 * 1024
CONNECT_PATIENCE_S = 30.0
_DATA, _END = b"D", b"E"


@dataclass
class BridgeStats:
    """What a bridge end carried.

    ``bytes_*`` count QEMU's stream (as QEMU wrote and read it); ``frame_bytes_*`` what the
    channels carried for it (after compression, with the one-byte frame tags).
    """

    connections: int = 0
    bytes_to_destination: int = 0
    bytes_from_destination: int = 0
    frame_bytes_to_destination: int = 0
    referenced_pages: int = 0  # RAM pages sent as references to a file the sink holds
    codec: str = CODEC_RAW
    streams: list[int] = field(default_factory=list)  # transport streams per channel, at end
    levels: list[list[tuple[int, str, float]]] = field(default_factory=list)

    def count_sent(self, raw: int, framed: int, referenced: int = 0, *, outbound: bool) -> None:
        """Count a frame this end sent: ``raw`` stream bytes as ``framed`` bytes."""
        if outbound:
            self.bytes_to_destination += raw
            self.frame_bytes_to_destination += framed
            self.referenced_pages += referenced
        else:
            self.bytes_from_destination += raw


async def connect_unix(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
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


async def pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    channel: Channel,
    stats: BridgeStats,
    *,
    outbound: bool,
    controller: LevelController | None = None,
    decoder: ChunkDecoder | None = None,
    references: ReferenceIndex | None = None,
) -> None:
    """Copy socket -> channel and channel -> socket until both directions ended.

    ``controller`` (source side) compresses what goes out; ``decoder`` (sink side) undoes it.
    """
    sent_end = asyncio.Event()
    decoder = decoder or ChunkDecoder(CODEC_RAW)

    counted = functools.partial(stats.count_sent, outbound=outbound)

    async def socket_to_channel() -> None:
        if controller is not None:
            await send_encoded(
                reader, channel, controller, CHUNK_BYTES, counted, references=references
            )
            stats.levels.append(controller.history)
        else:
            while data := await reader.read(CHUNK_BYTES):
                await channel.send(_DATA + data)
                counted(len(data), len(data) + 1)
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
            data = decoder.decode(frame)
            writer.write(data)
            await writer.drain()
            if outbound:
                stats.bytes_from_destination += len(data)
            else:
                stats.bytes_to_destination += len(data)
                stats.frame_bytes_to_destination += len(frame)

    try:
        await asyncio.gather(socket_to_channel(), channel_to_socket())
    finally:
        with contextlib.suppress(Exception):
            stats.streams.append(channel.stats().streams)
        # Both directions ended: the peer may have closed first, nothing is left to flush.
        with contextlib.suppress(TransportError):
            await channel.drain()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        await channel.close()
