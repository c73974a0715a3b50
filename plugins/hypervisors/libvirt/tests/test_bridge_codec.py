"""A real QEMU guest live-migrated with its stream compressed by the bridge, over DWCP.

The bridge's two ends run as on two hosts (the sink in its own event loop and thread); the
guest's heartbeat must go on at the destination. A compressed frame corrupted on the way
must fail the migration cleanly: libvirt reports the failure and the guest runs on at the
source. (Memory contents are not compared for a running guest: QEMU 7.2 under TCG may lose
guest writes made during a live migration, fixed in QEMU 9.0; see test_qemu_migration.py.)
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import pytest

pytest.importorskip("libvirt", reason="libvirt-python is not installed (needs libvirt-dev)")

import libvirt

from novacron_libvirt.bridge import StreamBridgeSink, StreamBridgeSource
from novacron_libvirt.driver import LibvirtDriver
from novacron_libvirt.migration import migration_flags_and_params, rewrite_paths
from novacron_libvirt.testing.console import SerialConsole
from novacron_libvirt.testing.lab import BootedGuest, Lab, fresh_guest
from novacron_libvirt.testing.params import requires_dwcp
from novacron_sdk.errors import FrameError
from novacron_sdk.migration.models import MigrationSettings
from novacron_sdk.models import VMState
from novacron_sdk.plugin.manager import build_plugin_manager
from novacron_sdk.transport.interface import Channel, ChannelStats, Endpoint, Transport

pytestmark = [
    pytest.mark.slow,
    requires_dwcp,
]
T = TypeVar("T")


def dwcp() -> Transport:
    """The DWCP transport, from the plugin registry."""
    return build_plugin_manager().transports.get("dwcp")()


class CorruptingChannel(Channel):
    """A real channel that flips one byte in the ``nth`` compressed frame it sends."""

    def __init__(self, inner: Channel, nth: int) -> None:
        self.inner = inner
        self.left = nth

    async def send(self, frame: bytes) -> None:
        """Send ``frame``; the nth ``Z`` frame with a byte flipped mid-way."""
        if frame[:1] == b"Z":
            self.left -= 1
            if self.left == 0:
                damaged = bytearray(frame)
                damaged[len(frame) // 2] ^= 0x5A
                frame = bytes(damaged)
        await self.inner.send(frame)

    async def recv(self) -> bytes:
        """The inner channel's next frame."""
        return await self.inner.recv()

    async def drain(self) -> None:
        """Drain the inner channel."""
        await self.inner.drain()

    async def close(self) -> None:
        """Close the inner channel."""
        await self.inner.close()

    def stats(self) -> ChannelStats:
        """The inner channel's counters."""
        return self.inner.stats()


class CorruptingTransport(Transport):
    """DWCP whose connecting side corrupts a compressed frame (the sink must refuse it)."""

    name = "dwcp"

    def __init__(self) -> None:
        super().__init__()
        self.inner = dwcp()

    async def listen(self, endpoint: Endpoint, handler: Any) -> Any:
        """Listen with the real DWCP transport."""
        return await self.inner.listen(endpoint, handler)

    async def connect(self, endpoint: Endpoint, *, timeout: float = 10.0) -> Channel:
        """Connect with the real DWCP transport; corrupt the 20th compressed frame."""
        return CorruptingChannel(await self.inner.connect(endpoint, timeout=timeout), 20)


class SinkHost:
    """The sink's own event loop in a thread, as on another host."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` in the sink's loop and wait for it here."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def stop(self) -> None:
        """Stop the loop and its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


async def bridged_migration(
    lab: Lab, guest: BootedGuest, source_transport: Transport
) -> tuple[StreamBridgeSource, StreamBridgeSink, BaseException | None]:
    """Migrate ``guest`` through a compressing bridge; the two ends and libvirt's error."""
    name = guest.vm.name
    qemu_socket, source_socket, destination_socket = lab.migration_sockets(name)
    session = secrets.token_hex(8)
    host = SinkHost()
    source = LibvirtDriver({"uri": lab.source.uri, "events": False})
    destination = LibvirtDriver({"uri": lab.destination.uri, "events": False})
    sink = StreamBridgeSink(dwcp(), Endpoint(), destination_socket, session)
    bridge: StreamBridgeSource | None = None
    try:
        await host.run(sink.start())
        bridge = StreamBridgeSource(
            source_transport, sink.endpoint, source_socket, session, codec="zstd"
        )
        await bridge.start()
        console = str(lab.serial_socket(lab.destination, name))
        xml = await source.ex_domain_xml(name, flags=8)  # VIR_DOMAIN_XML_MIGRATABLE
        flags, params = migration_flags_and_params(
            MigrationSettings(downtime_limit_ms=300, timeout_s=120),
            f"unix://{qemu_socket}",
            rewrite_paths(xml, {str(guest.serial_socket): console}),
        )
        domain = await source.ex_domain(name)
        error: BaseException | None = None
        try:
            await asyncio.to_thread(domain.migrate3, destination.ex_connection, params, flags)
        except libvirt.libvirtError as exc:
            error = exc
        return bridge, sink, error
    finally:
        # Also when the test failed before the migration: the bridges' sockets must not leak
        # into the next test (as ResourceWarnings), nor the sink's loop outlive it.
        try:
            if bridge is not None:
                await bridge.close()
        finally:
            try:
                await host.run(sink.close())
            finally:
                host.stop()
                await source.close()
                await destination.close()


@pytest.fixture
async def guest(lab: Lab) -> AsyncIterator[BootedGuest]:
    """A freshly booted guest on the source (destroyed wherever it ends up)."""
    async with fresh_guest(lab, "zst") as booted:
        yield booted


async def test_compressed_live_migration_over_dwcp_keeps_the_heartbeat(
    lab: Lab, guest: BootedGuest
) -> None:
    console = await SerialConsole.connect(guest.serial_socket)
    try:
        await console.next_heartbeat(1)  # the guest has been running a while
    finally:
        await console.close()
    bridge, sink, error = await bridged_migration(lab, guest, dwcp())
    assert error is None
    assert not bridge.errors
    assert not sink.errors
    assert bridge.stats.codec == sink.stats.codec == "zstd"
    assert bridge.stats.bytes_to_destination == sink.stats.bytes_to_destination
    assert bridge.stats.frame_bytes_to_destination < bridge.stats.bytes_to_destination
    moved = await SerialConsole.connect(lab.serial_socket(lab.destination, guest.vm.name))
    try:
        first = await moved.next_heartbeat(0)
        assert await moved.next_heartbeat(first) > first
        assert (await moved.run("echo $((6 * 7))")).strip().endswith("42")
    finally:
        await moved.close()
    destination = LibvirtDriver({"uri": lab.destination.uri, "events": False})
    try:
        assert (await destination.get_vm(guest.vm.name)).state == VMState.RUNNING
    finally:
        await destination.close()


async def test_a_corrupt_compressed_frame_fails_the_migration_and_the_guest_stays(
    lab: Lab, guest: BootedGuest
) -> None:
    _bridge, sink, error = await bridged_migration(lab, guest, CorruptingTransport())
    assert isinstance(error, libvirt.libvirtError)
    assert any(isinstance(e, FrameError) and "corrupt" in str(e) for e in sink.errors)
    source = LibvirtDriver({"uri": lab.source.uri, "events": False})
    destination = LibvirtDriver({"uri": lab.destination.uri, "events": False})
    try:
        assert (await source.get_vm(guest.vm.id)).state == VMState.RUNNING
        assert guest.vm.name not in {vm.name for vm in await destination.list_vms()}
    finally:
        await source.close()
        await destination.close()
    console = await SerialConsole.connect(guest.serial_socket)
    try:
        first = await console.next_heartbeat(0)
        assert await console.next_heartbeat(first) > first
    finally:
        await console.close()
