"""The builtin tcp transport: the contract suite, plus attacks from a raw socket."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import zlib
from collections.abc import AsyncIterator

import pytest

from novacron_sdk.builtin.tcp_transport import TcpTransport
from novacron_sdk.errors import FrameError, TransportError
from novacron_sdk.plugin.manager import build_plugin_manager
from novacron_sdk.testing.transport import TransportContract, channel_pair
from novacron_sdk.testing.waiting import eventually
from novacron_sdk.transport import framing
from novacron_sdk.transport.interface import Channel, Endpoint


class TestTcpContract(TransportContract):
    @pytest.fixture
    def transport(self) -> TcpTransport:
        return TcpTransport()


class RawPeer:
    """A raw TCP client of a TcpTransport listener, and the channel the listener accepted."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Channel):
        self.reader, self.writer, self.server = reader, writer, server

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


@pytest.fixture
async def raw_peer() -> AsyncIterator[RawPeer]:
    accepted: asyncio.Queue[Channel] = asyncio.Queue()

    async def handler(channel: Channel) -> None:
        await accepted.put(channel)

    listener = await TcpTransport({"max_frame_bytes": 1 << 20}).listen(Endpoint(), handler)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.endpoint.port)
        try:
            server = await asyncio.wait_for(accepted.get(), 20)
            try:
                yield RawPeer(reader, writer, server)
            finally:
                await server.close()
        finally:
            writer.close()
            with contextlib.suppress(OSError):  # the listener side may have reset it
                await writer.wait_closed()
    finally:
        await listener.close()


def frame(
    seq: int, payload: bytes, *, crc_delta: int = 0, magic: bytes = b"NC", version: int = 1
) -> bytes:
    prefix = struct.pack("!2sBBQI", magic, version, 0, seq, len(payload))
    crc = (zlib.crc32(payload, zlib.crc32(prefix)) + crc_delta) & 0xFFFFFFFF
    return prefix + struct.pack("!I", crc) + payload


async def test_raw_frames_are_accepted(raw_peer: RawPeer) -> None:
    await raw_peer.send(frame(0, b"hello") + frame(1, b"") + frame(2, b"world"))
    assert [await raw_peer.server.recv() for _ in range(3)] == [b"hello", b"", b"world"]


async def test_corrupted_crc_is_rejected_and_channel_closed(raw_peer: RawPeer) -> None:
    await raw_peer.send(frame(0, b"good") + frame(1, b"payload", crc_delta=1))
    assert await raw_peer.server.recv() == b"good"
    with pytest.raises(FrameError, match="CRC"):
        await raw_peer.server.recv()
    with pytest.raises(TransportError, match="unusable"):
        await raw_peer.server.recv()
    with pytest.raises(TransportError):
        await raw_peer.server.send(b"after the error")
    # The listener side dropped the connection: the raw peer reads end-of-stream.
    assert await asyncio.wait_for(raw_peer.reader.read(), 20) == b""


async def test_flipped_payload_bit_is_rejected(raw_peer: RawPeer) -> None:
    data = bytearray(frame(0, bytes(1000)))
    data[framing.HEADER_SIZE + 500] ^= 0x10
    await raw_peer.send(bytes(data))
    with pytest.raises(FrameError, match="CRC"):
        await raw_peer.server.recv()


async def test_replayed_frame_is_rejected(raw_peer: RawPeer) -> None:
    first = frame(0, b"transfer 100")
    await raw_peer.send(first + first)
    assert await raw_peer.server.recv() == b"transfer 100"
    with pytest.raises(FrameError, match=r"replayed/out-of-order frame: got seq 0, expected 1"):
        await raw_peer.server.recv()


async def test_reordered_frame_is_rejected(raw_peer: RawPeer) -> None:
    await raw_peer.send(frame(0, b"a") + frame(2, b"c") + frame(1, b"b"))
    assert await raw_peer.server.recv() == b"a"
    with pytest.raises(FrameError, match=r"got seq 2, expected 1"):
        await raw_peer.server.recv()


async def test_truncated_payload(raw_peer: RawPeer) -> None:
    await raw_peer.send(frame(0, bytes(1000))[:-400])
    raw_peer.writer.close()
    with pytest.raises(FrameError, match="truncated frame"):
        await raw_peer.server.recv()


async def test_truncated_large_payload(raw_peer: RawPeer) -> None:
    # Larger than the scratch buffer, so it is read in place into its own buffer.
    await raw_peer.send(frame(0, bytes(600_000))[:300_000])
    raw_peer.writer.close()
    with pytest.raises(FrameError, match="truncated frame"):
        await raw_peer.server.recv()


async def test_truncated_header(raw_peer: RawPeer) -> None:
    await raw_peer.send(frame(0, b"x")[:7])
    raw_peer.writer.close()
    with pytest.raises(FrameError, match="truncated frame"):
        await raw_peer.server.recv()


async def test_clean_close_between_frames_is_peer_closed(raw_peer: RawPeer) -> None:
    await raw_peer.send(frame(0, b"bye"))
    raw_peer.writer.close()
    assert await raw_peer.server.recv() == b"bye"
    with pytest.raises(TransportError, match="peer closed") as info:
        await raw_peer.server.recv()
    assert not isinstance(info.value, FrameError)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (frame(0, b"x", magic=b"XX"), "magic"),
        (frame(0, b"x", version=2), "version"),
    ],
)
async def test_bad_header(raw_peer: RawPeer, data: bytes, message: str) -> None:
    await raw_peer.send(data)
    with pytest.raises(FrameError, match=message):
        await raw_peer.server.recv()


async def test_huge_declared_length_rejected_from_header_alone(raw_peer: RawPeer) -> None:
    header = struct.pack("!2sBBQII", b"NC", 1, 0, 0, 0xFFFFFFFF, 0)
    await raw_peer.send(header)  # and no payload: the receiver must not wait for 4 GiB
    with pytest.raises(FrameError, match="exceeds max_frame_bytes"):
        await asyncio.wait_for(raw_peer.server.recv(), 20)


async def test_frames_split_at_every_boundary(raw_peer: RawPeer) -> None:
    payloads = [bytes([i]) * size for i, size in enumerate((0, 1, 19, 20, 21, 4096, 262_145))]
    blob = b"".join(frame(i, p) for i, p in enumerate(payloads))
    sock = raw_peer.writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    dribble = 210  # 7-byte dribbles first, then big chunks
    for i in range(0, dribble, 7):
        await raw_peer.send(blob[i : i + 7])
        await asyncio.sleep(0)
    for i in range(dribble, len(blob), 50_000):
        await raw_peer.send(blob[i : i + 50_000])
    assert [await raw_peer.server.recv() for _ in payloads] == payloads


@pytest.mark.parametrize("size", [256 * 1024 - framing.HEADER_SIZE, 256 * 1024, 256 * 1024 + 1])
async def test_frames_around_the_scratch_size(size: int) -> None:
    frames = [bytes([n]) * size for n in range(4)] + [b"tail"]
    async with channel_pair(TcpTransport()) as (client, server):
        for f in frames:
            await client.send(f)
        assert [await server.recv() for _ in frames] == frames


async def test_wire_format_as_documented() -> None:
    sent: list[bytes] = [b"first", b"second"]

    async def handler(channel: Channel) -> None:
        for payload in sent:
            await channel.send(payload)
        await channel.close()

    listener = await TcpTransport().listen(Endpoint(), handler)
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.endpoint.port)
    try:
        for seq, payload in enumerate(sent):
            header = await reader.readexactly(20)
            magic, version, flags, got_seq, length, crc = struct.unpack("!2sBBQII", header)
            body = await reader.readexactly(length)
            assert (magic, version, flags, got_seq, body) == (b"NC", 1, 0, seq, payload)
            assert crc == zlib.crc32(body, zlib.crc32(header[:16]))
        assert await reader.read() == b""
    finally:
        writer.close()
        await writer.wait_closed()
        await listener.close()


async def test_sender_refuses_frames_over_its_own_limit() -> None:
    async with channel_pair(TcpTransport({"max_frame_bytes": 100})) as (client, server):
        with pytest.raises(FrameError, match="max_frame_bytes=100"):
            await client.send(bytes(101))
        await client.send(bytes(100))
        assert await server.recv() == bytes(100)


async def test_connect_timeout_names_the_address() -> None:
    async def ignore(channel: Channel) -> None:
        await channel.close()

    listener = await TcpTransport().listen(Endpoint(), ignore)
    try:
        with pytest.raises(
            TransportError, match=rf"127\.0\.0\.1:{listener.endpoint.port}.*timed out"
        ):
            await TcpTransport().connect(listener.endpoint, timeout=0)
    finally:
        await listener.close()


async def test_back_pressure_bounds_the_write_buffer() -> None:
    transport = TcpTransport(
        {
            "write_buffer_bytes": 256 * 1024,
            "send_buffer_bytes": 64 * 1024,
            "recv_queue_bytes": 256 * 1024,
        }
    )
    async with channel_pair(transport) as (client, server):
        payload = bytes(128 * 1024)
        buffered = client._transport.get_write_buffer_size  # type: ignore[attr-defined]
        sender = asyncio.create_task(_send_many(client, payload, 200))
        try:
            # The receiver reads nothing: once the socket buffers are full, the write buffer
            # reaches its high-water mark (without back-pressure the sender has written all
            # 25 MiB into it by then, and is done)...
            await eventually(lambda: buffered() > 256 * 1024, "the write buffer fills up")
            await asyncio.sleep(0.2)
            # ...and the sender must be parked in send(), not done, with the buffer bounded.
            assert not sender.done()
            assert buffered() <= 256 * 1024 + len(payload) + framing.HEADER_SIZE
            for _ in range(200):
                assert await server.recv() == payload
            await sender
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)


async def _send_many(channel: Channel, payload: bytes, n: int) -> None:
    for _ in range(n):
        await channel.send(payload)


@pytest.mark.parametrize("settings", [{"max_frame_bytes": -1}, {"send_buffer_bytes": "big"}])
def test_bad_settings_are_reported(settings: dict[str, object]) -> None:
    with pytest.raises(TransportError, match=next(iter(settings))):
        TcpTransport(settings)


def test_registered_as_tcp() -> None:
    assert build_plugin_manager(autoload=False).transports.get("tcp") is TcpTransport
