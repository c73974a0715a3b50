"""The stream bridge over real unix sockets and the builtin TCP transport, and the settings map."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("libvirt", reason="libvirt-python is not installed (needs libvirt-dev)")

import libvirt

from novacron_libvirt.bridge import StreamBridgeSink, StreamBridgeSource
from novacron_libvirt.migration import migration_flags_and_params, rewrite_paths
from novacron_sdk.builtin.tcp_transport import TcpTransport
from novacron_sdk.migration.models import MigrationSettings
from novacron_sdk.transport.interface import Endpoint


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory for unix sockets (their paths are limited to 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="ncb-") as path:
        yield Path(path)


async def test_connections_arrive_in_order_with_their_bytes_both_ways(socket_dir: Path) -> None:
    accepted: list[bytes] = []
    all_in = asyncio.Event()

    async def fake_destination_qemu(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        first = await reader.readexactly(8)  # each connection starts with its own tag
        accepted.append(first)
        if len(accepted) == 4:
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
            writer.write(f"conn-{n:03d}".encode())
            await writer.drain()
            connections.append((reader, writer))
        await asyncio.wait_for(all_in.wait(), timeout=10)
        for _reader, writer in connections:
            writer.write(payload)
            writer.write_eof()
        replies = [await reader.read() for reader, _writer in connections]
    finally:
        for _reader, writer in connections:
            writer.close()
        await source.close()
        await sink.close()
        server.close()
        await server.wait_closed()
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
    try:
        reader, writer = await asyncio.open_unix_connection(str(socket_dir / "src.sock"))
        writer.write(b"data")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), timeout=10) == b""
        writer.close()
    finally:
        await source.close()
        await sink.close()
    assert any("session" in str(error) for error in sink.errors)


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
