"""Regression tests for the review of the libvirt plugin (reproducers in /tmp/review-libvirt).

Fast: libvirt's in-process ``test:///default`` driver, real unix sockets and the builtin TCP
transport on 127.0.0.1. Stand-ins only where the real part cannot run here; each test that
uses one names it in its docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("libvirt", reason="libvirt-python is not installed (needs libvirt-dev)")

import libvirt

from novacron_libvirt import agent_migration, migration
from novacron_libvirt.agent_migration import StreamSettings
from novacron_libvirt.bridge import StreamBridgeSink, StreamBridgeSource
from novacron_libvirt.driver import LibvirtDriver
from novacron_sdk.builtin.tcp_transport import TcpTransport
from novacron_sdk.compute.interface import StreamMigrationOffer
from novacron_sdk.errors import (
    ConfigError,
    DriverError,
    InvalidStateError,
    MigrationAbortedError,
    MigrationError,
    NotFoundError,
    SecurityError,
    TransportError,
)
from novacron_sdk.migration.models import MigrationSettings
from novacron_sdk.models import VMSpec, VMState
from novacron_sdk.testing.waiting import eventually
from novacron_sdk.transport.interface import Channel, Endpoint

TEST_XML = (
    "<domain type='test'><name>x</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>"
    "<os><type arch='x86_64'>hvm</type></os></domain>"
)


@pytest.fixture
async def driver() -> AsyncIterator[LibvirtDriver]:
    """A driver on libvirt's in-process test driver (its domain ``test`` runs)."""
    driver = LibvirtDriver({"uri": "test:///default", "events": False})
    try:
        yield driver
    finally:
        await driver.close()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory for unix sockets (their paths are limited to 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="ncr-") as path:
        yield Path(path)


# -- 1. create_vm must not overwrite (and then undefine) an existing domain ----------------


async def test_create_vm_refuses_the_name_or_uuid_of_an_existing_domain(
    driver: LibvirtDriver,
) -> None:
    conn = driver.ex_connection
    running = conn.lookupByName("test")
    assert running.isActive()
    assert running.isPersistent()
    xml = running.XMLDesc(0)
    for name in ("test", "other-name"):  # same name and UUID; same UUID only
        with pytest.raises(InvalidStateError, match="already exists") as caught:
            await driver.create_vm(VMSpec(name=name, extra={"domain_xml": xml}))
        assert "test" in str(caught.value)
    # The running guest is untouched: still persistent, same definition.
    again = conn.lookupByName("test")
    assert again.isActive()
    assert again.isPersistent()
    assert again.XMLDesc(0) == xml
    with pytest.raises(NotFoundError):
        await driver.get_vm("other-name")
    # The same name without domain_xml is refused too.
    with pytest.raises(InvalidStateError, match="already exists"):
        await driver.create_vm(VMSpec(name="test"))
    assert conn.lookupByName("test").isPersistent()


# -- 2. a timeout or cancel that comes too late reports the completed migration ------------


class _LateAbortDomain:
    """Stand-in for a virDomain in post-copy: ``abortJob`` raises as libvirt does there
    ("cannot abort migration in post-copy mode") and ``migrate3`` then completes. The test
    driver cannot migrate, and a real post-copy needs two QEMU daemons and userfaultfd.
    """

    def __init__(self, *, abort_works: bool = False, runs_s: float = 0.5) -> None:
        self.abort_works = abort_works
        self.runs_s = runs_s
        self.aborted = threading.Event()

    def name(self) -> str:
        return "vm"

    def migrate3(self, _conn: object, _params: dict[str, Any], _flags: int) -> str:
        if self.aborted.wait(self.runs_s):
            raise libvirt.libvirtError("operation aborted: migration job: canceled by client")
        return "DOMAIN-AT-DESTINATION"

    def abortJob(self) -> None:
        if not self.abort_works:
            raise libvirt.libvirtError("cannot abort migration in post-copy mode")
        self.aborted.set()

    def jobInfo(self) -> list[int]:
        return [libvirt.VIR_DOMAIN_JOB_NONE] + [0] * 11


class _Destination:
    ex_connection = object()


class _Bridge:
    class stats:
        frame_bytes_to_destination = 0


async def _run(domain: _LateAbortDomain, settings: MigrationSettings) -> tuple[Any, bool]:
    watch = migration._Watch(_Bridge(), None)  # type: ignore[arg-type]
    return await migration._run_migration(
        _Destination(),  # type: ignore[arg-type]
        domain,
        0,
        {},
        settings,
        watch=watch,
    )


async def test_a_timeout_whose_abort_is_refused_returns_the_completed_migration(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Uses the _LateAbortDomain stand-in (post-copy cannot run here)."""
    moved, _postcopy = await _run(_LateAbortDomain(), MigrationSettings(timeout_s=0.1))
    assert moved == "DOMAIN-AT-DESTINATION"
    assert "abort came too late" in caplog.text


async def test_a_cancel_whose_abort_is_refused_returns_the_completed_migration() -> None:
    """Uses the _LateAbortDomain stand-in (post-copy cannot run here)."""
    task = asyncio.create_task(_run(_LateAbortDomain(), MigrationSettings()))
    await asyncio.sleep(0.1)
    task.cancel()
    moved, _postcopy = await task
    assert moved == "DOMAIN-AT-DESTINATION"


async def test_an_abort_that_works_still_raises() -> None:
    """Uses the _LateAbortDomain stand-in, here with an abortJob that succeeds."""
    with pytest.raises(MigrationAbortedError, match="runs at the source"):
        await _run(_LateAbortDomain(abort_works=True, runs_s=5), MigrationSettings(timeout_s=0.1))
    task = asyncio.create_task(
        _run(_LateAbortDomain(abort_works=True, runs_s=5), MigrationSettings())
    )
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- 3. the ticket's socket path must be one the plugin makes, in migration_dir -------------


async def test_a_ticket_socket_outside_migration_dir_is_refused(socket_dir: Path) -> None:
    (socket_dir / "mig").mkdir()
    victim = socket_dir / "victim.txt"
    victim.write_text("precious")
    settings = StreamSettings.from_settings(
        {"migration_dir": str(socket_dir / "mig")}, "qemu:///system"
    )
    mig = socket_dir / "mig"
    for hostile in (
        Path(f"{mig}/../victim.txt"),
        Path(f"{mig}/../nc-abc.sock"),
        mig / "sub" / "nc-abc.sock",
        mig / "victim.txt",
        mig / "nc-.sock",
        mig / ("nc-" + "a" * 25 + ".sock"),
        Path("nc-abc.sock"),
    ):
        with pytest.raises(SecurityError, match="not a socket name this plugin makes"):
            settings.local_path(hostile)
    with pytest.raises(ConfigError, match="same directory on both hosts"):
        settings.local_path(Path("/elsewhere/nc-abc.sock"))
    assert settings.local_path(mig / "nc-0123abcd_-X.sock") == mig / "nc-0123abcd_-X.sock"
    assert victim.read_text() == "precious"


async def test_the_source_bridge_never_replaces_a_file_that_is_not_a_socket(
    socket_dir: Path,
) -> None:
    victim = socket_dir / "victim.txt"
    victim.write_text("precious")
    source = StreamBridgeSource(TcpTransport(), Endpoint(port=1), victim, "s", preconnect=False)
    with pytest.raises(TransportError, match="is not a socket"):
        await source.start()
    await source.close()
    assert victim.read_text() == "precious"
    assert oct(victim.stat().st_mode & 0o777) != "0o666"


async def test_prepare_refuses_a_session_that_cannot_name_a_socket(
    driver: LibvirtDriver, socket_dir: Path
) -> None:
    vm = (await driver.list_vms())[0]
    xml = TEST_XML.replace("<name>x</name>", "<name>incoming-x</name>")
    offer = StreamMigrationOffer(driver="libvirt", vm=vm, data={"xml": xml})
    settings = StreamSettings.from_settings({"migration_dir": str(socket_dir)}, "test:///default")
    with pytest.raises(MigrationError, match="cannot name a migration socket"):
        await agent_migration.prepare(
            driver, settings, offer, transport=TcpTransport(), listen=Endpoint(), session="../x"
        )
    with pytest.raises(NotFoundError):  # refused before anything was defined
        await driver.get_vm("incoming-x")


# -- 4. the bridge releases channels and tasks when a connection fails ---------------------


class _FirstChannelDrops(TcpTransport):
    """The builtin TCP transport whose channel carrying QEMU's connection 0 fails to send its
    hello: a stand-in for a link that drops right after connecting (a real drop cannot be
    timed before the hello here). Which channel that is depends on which of the pre-connected
    channels finished connecting first, so the drop is chosen by the hello's index. It records
    every channel it opened, whether it was closed, and which one dropped.
    """

    def __init__(self) -> None:
        super().__init__()
        self.opened: list[Channel] = []
        self.closed: set[int] = set()
        self.dropped: int | None = None

    async def connect(self, endpoint: Endpoint, *, timeout: float = 10.0) -> Channel:
        channel = await super().connect(endpoint, timeout=timeout)
        number = len(self.opened)
        self.opened.append(channel)
        real_close, real_send = channel.close, channel.send

        async def close() -> None:
            self.closed.add(number)
            await real_close()

        sent = 0

        async def send(frame: bytes) -> None:
            nonlocal sent
            sent += 1
            if sent == 1 and json.loads(frame[1:]).get("index") == 0:  # the hello
                self.dropped = number
                raise TransportError("link dropped")
            await real_send(frame)

        channel.close = close  # type: ignore[method-assign]
        channel.send = send  # type: ignore[method-assign]
        return channel


async def _bridges(
    socket_dir: Path, turn_timeout_s: float
) -> tuple[StreamBridgeSink, StreamBridgeSource, _FirstChannelDrops, asyncio.Server]:
    async def destination_qemu(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    qemu = await asyncio.start_unix_server(destination_qemu, path=str(socket_dir / "dst.sock"))
    sink = StreamBridgeSink(
        TcpTransport(),
        Endpoint(host="127.0.0.1"),
        socket_dir / "dst.sock",
        "s1",
        turn_timeout_s=turn_timeout_s,
    )
    await sink.start()
    transport = _FirstChannelDrops()
    source = StreamBridgeSource(transport, sink.endpoint, socket_dir / "src.sock", "s1")
    await source.start()
    return sink, source, transport, qemu


async def _qemu_connects_twice(socket_dir: Path) -> list[asyncio.StreamWriter]:
    writers = []
    for _ in range(2):  # the main channel, then one multifd channel
        _reader, writer = await asyncio.open_unix_connection(str(socket_dir / "src.sock"))
        writer.write(b"x" * 100)
        await writer.drain()
        writers.append(writer)
    return writers


def _other_tasks() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]


async def _release(
    writers: list[asyncio.StreamWriter],
    source: StreamBridgeSource,
    sink: StreamBridgeSink,
    qemu: asyncio.Server,
) -> None:
    """Close everything a bridge test opened, also when it failed half way (a leaked socket
    would otherwise be reported as a ResourceWarning in whichever test runs next).
    """
    for writer in writers:
        writer.close()
    for bridge in (source, sink):
        with contextlib.suppress(Exception):  # the test's own assertion is what to report
            await asyncio.wait_for(bridge.close(timeout_s=0.3), 10)
    qemu.close()
    await qemu.wait_closed()
    for writer in writers:
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_a_connection_lost_before_its_hello_releases_both_bridges(socket_dir: Path) -> None:
    """Uses the _FirstChannelDrops stand-in transport."""
    sink, source, transport, qemu = await _bridges(socket_dir, turn_timeout_s=0.5)
    writers: list[asyncio.StreamWriter] = []
    try:
        writers = await _qemu_connects_twice(socket_dir)
        await eventually(
            lambda: any("link dropped" in str(e) for e in source.errors),
            "the source reports the dropped link",
        )
        # the failed connection's channel is closed
        await eventually(
            lambda: transport.dropped in transport.closed, "the dropped channel closed"
        )
        # The sink does not wait forever for connection 0: connection 1 is dropped.
        await eventually(
            lambda: any("connection 0 before it did not" in str(e) for e in sink.errors),
            "the sink gives up on connection 0",
        )
        for writer in writers:  # QEMU's migration failed: it closes its sockets
            writer.close()
        # close() returns although a connection never finished (a hang would hit the bound)
        await asyncio.wait_for(source.close(), 10)
        await asyncio.wait_for(sink.close(), 10)
        assert not source._tasks
        assert not sink._active
        assert transport.closed == set(range(len(transport.opened)))
        await eventually(
            lambda: not [t for t in _other_tasks() if "_serve" in t.get_coro().__qualname__],
            "the bridges' serving tasks end",
        )
    finally:
        await _release(writers, source, sink, qemu)


async def test_close_cancels_connections_that_do_not_finish(socket_dir: Path) -> None:
    """Uses the _FirstChannelDrops stand-in transport; the sink's turn wait is long here
    (60 s), so a close() that waited for it instead of cancelling would hit the 10 s bound.
    """
    sink, source, transport, qemu = await _bridges(socket_dir, turn_timeout_s=60)
    writers: list[asyncio.StreamWriter] = []
    try:
        writers = await _qemu_connects_twice(socket_dir)
        await eventually(lambda: bool(sink._queued), "the sink holds connection 1 for its turn")
        await asyncio.wait_for(source.close(timeout_s=0.3), 10)
        assert not source._tasks
        assert transport.closed == set(range(len(transport.opened)))
        await asyncio.wait_for(sink.close(timeout_s=0.3), 10)
        assert not sink._active
        assert not sink._waiting
        for writer in writers:
            writer.close()

        def bridge_tasks() -> list[str]:
            left = [t.get_coro().__qualname__ for t in _other_tasks()]
            return [name for name in left if "bridge" in name.lower() or "pump" in name]

        await eventually(lambda: not bridge_tasks(), "the bridges' tasks end")
    finally:
        await _release(writers, source, sink, qemu)


# -- 5. null and relative migration settings -------------------------------------------------


@pytest.mark.parametrize("key", ["migration_uri", "migration_dir", "migration_local_dir"])
async def test_a_null_migration_setting_means_its_default(key: str) -> None:
    driver = LibvirtDriver({"uri": "test:///default", "events": False, key: None})
    try:
        settings = driver._stream_settings()
    finally:
        await driver.close()
    assert settings.migration_uri == "test:///default"
    assert settings.migration_dir == Path("/run/novacron-libvirt")
    assert settings.migration_local_dir == Path("/run/novacron-libvirt")


@pytest.mark.parametrize("key", ["migration_dir", "migration_local_dir"])
def test_a_relative_migration_dir_is_refused_when_the_driver_is_built(key: str) -> None:
    with pytest.raises(ConfigError, match=rf"libvirt\.{key}: .*absolute path"):
        LibvirtDriver({"uri": "test:///default", "events": False, key: "relative/dir"})


def test_stream_settings_from_a_mapping_with_nulls() -> None:
    settings = StreamSettings.from_settings(
        {"migration_uri": None, "migration_dir": None, "migration_path_map": None}, "qemu:///x"
    )
    assert settings.migration_uri == "qemu:///x"
    assert settings.migration_dir == Path("/run/novacron-libvirt")
    assert settings.migration_path_map == {}


# -- 6. characters XML cannot carry; tags with domain_xml -----------------------------------


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        (VMSpec(name="ctl", tags={"k": "a\x00b"}), "tag 'k'"),
        (VMSpec(name="ctl", tags={"k": "a\x01b"}), "tag 'k'"),
        (VMSpec(name="ctl", tags={"a\x1bb": "v"}), "tag key"),
        (VMSpec(name="ctl", extra={"cmdline": "console=ttyS0\x07"}), "spec.extra['cmdline']"),
    ],
)
async def test_characters_xml_cannot_store_are_invalid_input(
    driver: LibvirtDriver, spec: VMSpec, named: str
) -> None:
    with pytest.raises(DriverError) as caught:
        await driver.create_vm(spec)
    assert caught.value.code == "InvalidParameter"
    assert named in str(caught.value)
    assert "<domain" not in str(caught.value)  # no XML dump
    with pytest.raises(NotFoundError):
        await driver.get_vm("ctl")


async def test_tags_are_stored_in_a_given_domain_xml(driver: LibvirtDriver) -> None:
    vm = await driver.create_vm(
        VMSpec(name="with-xml", tags={"team": "a", "tab": "x\ty"}, extra={"domain_xml": TEST_XML})
    )
    try:
        assert vm.tags == {"team": "a", "tab": "x\ty"}
        assert (await driver.get_vm("with-xml")).tags == vm.tags
    finally:
        await driver.destroy(vm.id)


# -- 7. stopping a domain that is not running ------------------------------------------------


async def test_stopping_a_stopped_domain_is_an_invalid_state(driver: LibvirtDriver) -> None:
    """libvirt's test driver answers VIR_ERR_INTERNAL_ERROR ("domain not running"), which the
    driver passed on as a DriverError; every other action on a domain in the wrong state is an
    InvalidStateError, as the sim driver's stop of a stopped VM is.
    """
    vm = (await driver.list_vms())[0]
    stopped = await driver.stop(vm.id)
    assert stopped.state is VMState.STOPPED
    with pytest.raises(InvalidStateError, match=r"cannot stop domain .*it is stopped") as caught:
        await driver.stop(vm.id)
    assert caught.value.code == "VIR_ERR_OPERATION_INVALID"
    assert (await driver.get_vm(vm.id)).state is VMState.STOPPED
    assert (await driver.start(vm.id)).state is VMState.RUNNING
