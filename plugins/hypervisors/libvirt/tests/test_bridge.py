"""The stream bridge over real unix sockets and real transports, its codec, and the settings map.

Compression is checked end to end (fake QEMU ends on unix sockets, the builtin TCP transport,
and DWCP when installed) and at the decoder: hostile and corrupt frames are refused with a
FrameError before they reach QEMU, and the sink then closes that connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

pytest.importorskip("libvirt", reason="libvirt-python is not installed (needs libvirt-dev)")

import libvirt

from novacron_libvirt.bridge import StreamBridgeSink, StreamBridgeSource, default_codec
from novacron_libvirt.migration import migration_flags_and_params, rewrite_paths
from novacron_libvirt.streamcodec import (
    MAX_CHUNK_BYTES,
    RAW,
    ChunkDecoder,
    LevelController,
    compress_chunk,
)
from novacron_libvirt.testing.params import HAVE_DWCP, TRANSPORTS
from novacron_sdk.builtin.tcp_transport import TcpTransport
from novacron_sdk.errors import FrameError, TransportError
from novacron_sdk.migration.models import MigrationSettings
from novacron_sdk.plugin.manager import build_plugin_manager
from novacron_sdk.testing.waiting import eventually
from novacron_sdk.transport.interface import Channel, Endpoint, Transport


def transport_named(name: str) -> Transport:
    """A transport from the plugin registry."""
    return build_plugin_manager().transports.get(name)()


def stream_like_qemu(pages: int, seed: int) -> bytes:
    """Bytes shaped like QEMU's RAM section: 8-byte page headers, text-like and random pages."""
    out = bytearray()
    for n in range(pages):
        out += ((n << 12) | 0x08).to_bytes(8, "big")
        if n % 3 == 2:
            out += os.urandom(4096)  # incompressible, like compressed kernel images
        else:
            out += (f"page {n} seed {seed} ".encode() * 300)[:4096]
    return bytes(out)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory for unix sockets (their paths are limited to 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="ncb-") as path:
        yield Path(path)


async def release(
    writers: list[asyncio.StreamWriter],
    source: StreamBridgeSource | None,
    sink: StreamBridgeSink,
    server: asyncio.Server | None = None,
) -> None:
    """Close everything a bridge test opened, also when it failed half way (a leaked socket
    would otherwise be reported as a ResourceWarning in whichever test runs next).
    """
    for writer in writers:
        writer.close()
    try:
        if source is not None:
            await source.close()
    finally:
        try:
            await sink.close()
        finally:
            if server is not None:
                server.close()
                await server.wait_closed()
            for writer in writers:
                with contextlib.suppress(OSError):
                    await writer.wait_closed()


async def test_connections_arrive_in_order_with_their_bytes_both_ways(socket_dir: Path) -> None:
    accepted: list[bytes] = []
    all_in = asyncio.Event()

    async def fake_destination_qemu(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        slot = len(accepted)  # handlers start in accept order; their first bytes may not
        accepted.append(b"")
        first = await reader.readexactly(8)  # each connection starts with its own tag
        accepted[slot] = first
        if all(accepted) and len(accepted) == 4:
            all_in.set()
        rest = await reader.read()  # until the source half-closes
        writer.write(b"ack:" + first + str(len(rest)).encode())
        await writer.drain()
        writer.close()

    incoming = socket_dir / "dst.sock"
    server = await asyncio.start_unix_server(fake_destination_qemu, path=str(incoming))
    transport = TcpTransport()
    sink = StreamBridgeSink(transport, Endpoint(), incoming, "s1")
    await sink.start()
    source = StreamBridgeSource(transport, sink.endpoint, socket_dir / "src.sock", "s1")
    await source.start()
    payload = os.urandom(3 * 1024 * 1024)
    connections = []
    try:
        for n in range(4):  # like QEMU: main channel first, then multifd channels
            reader, writer = await asyncio.open_unix_connection(str(socket_dir / "src.sock"))
            connections.append((reader, writer))
            writer.write(f"conn-{n:03d}".encode())
            await writer.drain()
        await asyncio.wait_for(all_in.wait(), timeout=20)
        for _reader, writer in connections:
            writer.write(payload)
            writer.write_eof()
        replies = [await reader.read() for reader, _writer in connections]
    finally:
        await release([writer for _reader, writer in connections], source, sink, server)
    assert accepted == [f"conn-{n:03d}".encode() for n in range(4)]
    assert replies == [f"ack:conn-{n:03d}{len(payload)}".encode() for n in range(4)]
    assert source.stats.connections == sink.stats.connections == 4
    assert source.stats.bytes_to_destination == 4 * (8 + len(payload))
    assert sink.stats.bytes_from_destination == sum(len(r) for r in replies)
    assert not source.errors
    assert not sink.errors


async def test_a_foreign_session_is_refused(socket_dir: Path) -> None:
    transport = TcpTransport()
    sink = StreamBridgeSink(transport, Endpoint(), socket_dir / "none.sock", "mine")
    await sink.start()
    source = StreamBridgeSource(transport, sink.endpoint, socket_dir / "src.sock", "other")
    await source.start()
    writers: list[asyncio.StreamWriter] = []
    try:
        reader, writer = await asyncio.open_unix_connection(str(socket_dir / "src.sock"))
        writers.append(writer)
        writer.write(b"data")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), timeout=20) == b""
    finally:
        await release(writers, source, sink)
    assert any("session" in str(error) for error in sink.errors)


@pytest.mark.parametrize("transport_name", TRANSPORTS)
async def test_compressed_connections_keep_order_and_bytes(
    socket_dir: Path, transport_name: str
) -> None:
    received: dict[bytes, bytes] = {}
    order: list[bytes] = []
    all_in = asyncio.Event()

    async def fake_destination_qemu(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        slot = len(order)  # handlers start in accept order; their first bytes may not
        order.append(b"")
        tag = await reader.readexactly(8)
        order[slot] = tag
        received[tag] = await reader.read()
        writer.write(b"done")
        await writer.drain()
        writer.close()
        if len(received) == 3:
            all_in.set()

    incoming = socket_dir / "dst.sock"
    server = await asyncio.start_unix_server(fake_destination_qemu, path=str(incoming))
    sink = StreamBridgeSink(transport_named(transport_name), Endpoint(), incoming, "z1")
    await sink.start()
    source = StreamBridgeSource(
        transport_named(transport_name), sink.endpoint, socket_dir / "src.sock", "z1", codec="zstd"
    )
    await source.start()
    payloads = [stream_like_qemu(600, seed) for seed in range(3)]
    connections = []
    try:
        for n in range(3):  # main channel, then two multifd channels, opened in order
            reader, writer = await asyncio.open_unix_connection(str(socket_dir / "src.sock"))
            connections.append((reader, writer))
            writer.write(f"conn-{n:03d}".encode())
            await writer.drain()
        for (_reader, writer), payload in zip(connections, payloads, strict=True):
            writer.write(payload)
            writer.write_eof()
        replies = [await reader.read() for reader, _writer in connections]
        await asyncio.wait_for(all_in.wait(), timeout=20)
    finally:
        await release([writer for _reader, writer in connections], source, sink, server)
    tags = [f"conn-{n:03d}".encode() for n in range(3)]
    assert order == tags
    assert [received[tag] for tag in tags] == payloads
    assert replies == [b"done"] * 3
    assert sink.stats.codec == source.stats.codec == "zstd"
    assert source.stats.bytes_to_destination == sum(8 + len(p) for p in payloads)
    assert sink.stats.bytes_to_destination == source.stats.bytes_to_destination
    # A third of the pages are random: the frames shrink, but not below that third.
    assert source.stats.bytes_to_destination / 3 < source.stats.frame_bytes_to_destination
    assert source.stats.frame_bytes_to_destination < source.stats.bytes_to_destination * 0.6
    assert not source.errors
    assert not sink.errors


def test_dwcp_compresses_by_default_and_tcp_does_not() -> None:
    assert default_codec(TcpTransport()) == "raw"
    assert StreamBridgeSource(TcpTransport(), Endpoint(), Path("x"), "s").codec == "raw"
    if HAVE_DWCP:
        assert default_codec(transport_named("dwcp")) == "zstd"
    with pytest.raises(ValueError, match="unknown stream codec"):
        StreamBridgeSource(TcpTransport(), Endpoint(), Path("x"), "s", codec="lzma")


def test_decoder_round_trip_at_every_level() -> None:
    chunk = stream_like_qemu(40, 7)
    decoder = ChunkDecoder("zstd")
    for level in (RAW, 1, 3):
        frame, _seconds = compress_chunk({}, chunk, level)
        assert decoder.decode(frame) == chunk
    incompressible = os.urandom(100_000)
    frame, _seconds = compress_chunk({}, incompressible, 1)
    assert frame[:1] == b"D", "a chunk that does not shrink goes raw"
    assert decoder.decode(frame) == incompressible


def test_decoder_bounds_what_a_hostile_frame_can_expand_to() -> None:
    decoder = ChunkDecoder("zstd")
    declared_big = zstandard.ZstdCompressor().compress(bytes(MAX_CHUNK_BYTES + 1))
    with pytest.raises(FrameError, match="declares"):
        decoder.decode(b"Z" + declared_big)
    # No content size in the header: a 64 MiB bomb of zeros must not be expanded.
    writer = zstandard.ZstdCompressor(write_content_size=False)
    bomb = writer.compress(bytes(64 << 20))
    with pytest.raises(FrameError):
        decoder.decode(b"Z" + bomb)


def test_decoder_refuses_corrupt_frames_and_unknown_codecs() -> None:
    decoder = ChunkDecoder("zstd")
    frame, _seconds = compress_chunk({}, stream_like_qemu(20, 1), 1)
    assert frame[:1] == b"Z"
    corrupt = bytearray(frame)
    corrupt[len(corrupt) // 2] ^= 0xFF  # the frame's checksum no longer matches
    with pytest.raises(FrameError, match="corrupt"):
        decoder.decode(bytes(corrupt))
    with pytest.raises(FrameError, match="corrupt"):
        decoder.decode(b"Zgarbage")
    with pytest.raises(FrameError, match="unexpected frame"):
        ChunkDecoder("raw").decode(frame)
    with pytest.raises(FrameError, match="unknown stream codec"):
        ChunkDecoder("brotli")


async def _recv_until_error(channel: Channel) -> BaseException:
    while True:
        try:
            await channel.recv()
        except TransportError as exc:
            return exc


async def hostile_source(sink: StreamBridgeSink, hello: dict[str, object], frame: bytes) -> None:
    """Open a channel to ``sink`` like a source bridge would, and send ``frame`` after hello."""
    channel = await TcpTransport().connect(sink.endpoint)
    try:
        await channel.send(b"H" + json.dumps(hello).encode())
        await channel.send(frame)
        # The sink closes the channel once it refused the frame: recv ends with an error.
        refused = await asyncio.wait_for(_recv_until_error(channel), timeout=20)
        assert isinstance(refused, TransportError)
    finally:
        await channel.close()


@pytest.mark.parametrize(
    ("hello", "frame", "error"),
    [
        (
            {"version": 2, "session": "h", "index": 0, "codec": "zstd"},
            b"Z" + zstandard.ZstdCompressor(write_content_size=False).compress(bytes(8 << 20)),
            "declares",
        ),
        ({"version": 2, "session": "h", "index": 0, "codec": "zstd"}, b"Z\x28\xb5junk", "corrupt"),
        ({"version": 2, "session": "h", "index": 0, "codec": "lz77"}, b"D..", "unknown stream"),
        ({"version": 9, "session": "h", "index": 0, "codec": "zstd"}, b"D..", "version 9"),
    ],
)
async def test_the_sink_refuses_a_bad_channel_before_qemu_gets_its_bytes(
    socket_dir: Path, hello: dict[str, object], frame: bytes, error: str
) -> None:
    got: list[bytes] = []
    closed = asyncio.Event()

    async def fake_destination_qemu(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        got.append(await reader.read())  # until the sink closes the connection
        writer.close()
        closed.set()

    incoming = socket_dir / "dst.sock"
    server = await asyncio.start_unix_server(fake_destination_qemu, path=str(incoming))
    sink = StreamBridgeSink(TcpTransport(), Endpoint(), incoming, "h")
    await sink.start()
    try:
        await hostile_source(sink, hello, frame)
        if got or sink.stats.connections:  # connected before the frame was refused
            await asyncio.wait_for(closed.wait(), timeout=20)
    finally:
        await release([], None, sink, server)
    assert got in ([], [b""]), "QEMU received none of the hostile bytes"
    assert len(sink.errors) == 1
    assert isinstance(sink.errors[0], FrameError)
    assert error in str(sink.errors[0])


async def test_an_unused_spare_channel_is_no_error(socket_dir: Path) -> None:
    sink = StreamBridgeSink(TcpTransport(), Endpoint(), socket_dir / "none.sock", "s")
    await sink.start()
    source = StreamBridgeSource(TcpTransport(), sink.endpoint, socket_dir / "src.sock", "s")
    try:
        await source.start()
        # The spare connects (the sink then waits for its hello) ...
        await eventually(lambda: bool(sink._waiting), "the spare channel reaches the sink")
        await source.close()
        # ... and is closed unused: the sink drops it by itself (not cancelled by its close).
        await eventually(lambda: not sink._waiting, "the sink drops the closed spare")
    finally:
        await release([], source, sink)
    assert not source.errors
    assert not sink.errors
    assert sink.stats.connections == 0


class Clock:
    """Time that moves only when a test says so (the controller's decisions are about time)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def decide(controller: LevelController, clock: Clock, out: int = 1 << 20, **waits: float) -> int:
    """One second: 4 MiB of stream went out as ``out`` bytes, the sender waited ``waits``."""
    clock.now += 1.0
    controller.chunk_done(controller.level, controller.window_bytes, out, 0.01)
    controller.waited(**waits)
    return controller.level


def test_level_rises_when_the_link_is_the_bottleneck_and_falls_when_compression_is() -> None:
    clock = Clock()
    controller = LevelController(epoch_s=0.5, warmup_bytes=3 * (4 << 20), clock=clock)
    assert controller.level == 1
    assert decide(controller, clock, link=1.0) == 3
    assert decide(controller, clock, link=1.0) == 3, "no level above 3"
    assert decide(controller, clock, qemu=1.0) == 3, "QEMU-bound: compressing less gains nothing"
    assert decide(controller, clock, codec=1.0) == 1
    assert [step[1] for step in controller.history] == ["link", "link", "qemu", "codec"]


def test_raw_only_when_the_link_was_seen_faster_than_compression() -> None:
    clock = Clock()
    controller = LevelController(epoch_s=0.5, warmup_bytes=0, clock=clock)
    # Compression-bound, but the link never took more than 1 MiB/s of frames while level 1
    # made 4 MiB/s of stream: a busy CPU on a slow link, where raw would be slower still.
    assert decide(controller, clock, codec=1.0) == 1
    assert decide(controller, clock, codec=1.0) == 1
    # A fast link (it took 16 MiB of frames in the second): raw now.
    assert decide(controller, clock, out=16 << 20, codec=1.0) == RAW
    # Raw then moved fewer stream bytes per second than level 1 did: back to 1, for good.
    controller.throughputs[1] = float("inf")
    assert decide(controller, clock, link=1.0) == 1
    assert controller.raw_lost
    assert decide(controller, clock, out=16 << 20, codec=1.0) == 1


def test_level_holds_during_the_warm_up_and_when_nobody_waits() -> None:
    clock = Clock()
    controller = LevelController(epoch_s=0.5, clock=clock)
    assert decide(controller, clock, codec=1.0) == 1, "the send buffer is still filling"
    assert decide(controller, clock) == 1
    assert decide(controller, clock) == 1
    # Half of each window carries into the next: the old wait fades out over two windows.
    assert [step[1] for step in controller.history] == ["codec", "codec", "none"]


def test_settings_map_to_libvirt_flags_and_parameters() -> None:
    settings = MigrationSettings(
        multifd_channels=4,
        postcopy=True,
        auto_converge=True,
        throttle_initial=0.3,
        throttle_increment=0.1,
        max_bandwidth_bps=800e6,
    )
    flags, params = migration_flags_and_params(settings, "unix:///tmp/x.sock", "<domain/>")
    for flag in (
        libvirt.VIR_MIGRATE_LIVE,
        libvirt.VIR_MIGRATE_PARALLEL,
        libvirt.VIR_MIGRATE_POSTCOPY,
        libvirt.VIR_MIGRATE_AUTO_CONVERGE,
        libvirt.VIR_MIGRATE_PERSIST_DEST,
        libvirt.VIR_MIGRATE_UNDEFINE_SOURCE,
    ):
        assert flags & flag
    assert params[libvirt.VIR_MIGRATE_PARAM_URI] == "unix:///tmp/x.sock"
    assert params[libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS] == 4
    assert params[libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL] == 30
    assert params[libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT] == 10
    assert params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] == 95  # MiB/s, rounded down
    assert params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] == "<domain/>"
    plain, plain_params = migration_flags_and_params(
        MigrationSettings(precopy=False, auto_converge=False, max_bandwidth_bps=1.0), "unix:///a"
    )
    assert not plain & (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PARALLEL)
    assert plain_params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] == 1  # a cap never becomes 0


def test_rewrite_paths_changes_only_exact_values() -> None:
    xml = (
        "<domain><devices><serial type='unix'><source mode='bind' path='/a/s.sock'/></serial>"
        "<disk><source file='/a/s.sock.img'/></disk></devices><name>/a/s.sock</name></domain>"
    )
    out = rewrite_paths(xml, {"/a/s.sock": "/b/s.sock"})
    assert 'path="/b/s.sock"' in out
    assert 'file="/a/s.sock.img"' in out
    assert "<name>/b/s.sock</name>" in out
