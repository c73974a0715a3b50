"""Live migration of a real QEMU guest between two libvirt daemons, through the transport.

QEMU's stream goes to a unix socket, the NovaCron transport (builtin TCP, and DWCP when it
is installed) carries every connection to the destination, which feeds the destination
QEMU's incoming socket. The guest's heartbeat must go on at the destination and the source
must be gone.

Debian 12's QEMU 7.2 can lose guest memory writes made *during* a live migration under TCG
(a race fixed upstream in QEMU 9.0), so memory contents are compared only for a paused
guest; for running guests the tests check what survives that race: libvirt started the
destination from the migration stream, the guest keeps printing heartbeats and answering
at the destination, and the source is gone. (The heartbeat *value* can go back: the
counter's latest writes may be among those lost.)
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

pytest.importorskip("libvirt", reason="libvirt-python is not installed (needs libvirt-dev)")

import libvirt

from novacron_libvirt.driver import LibvirtDriver
from novacron_libvirt.migration import StreamMigrationResult, migrate_stream, rewrite_paths
from novacron_libvirt.testing.console import SerialConsole
from novacron_libvirt.testing.lab import BootedGuest, Lab, fresh_guest
from novacron_libvirt.testing.params import TRANSPORTS, dwcp_param
from novacron_sdk.errors import MigrationAbortedError, NotFoundError
from novacron_sdk.migration.models import MigrationSettings
from novacron_sdk.models import VMState
from novacron_sdk.plugin.manager import build_plugin_manager
from novacron_sdk.transport.interface import Transport

pytestmark = pytest.mark.slow
MIB = 1024 * 1024


def transport_named(name: str) -> Transport:
    """A transport from the plugin registry, as the migration engine would pick it."""
    plugins = build_plugin_manager()
    return plugins.transports.get(name)()


async def migrate(
    lab: Lab,
    guest: BootedGuest,
    source: LibvirtDriver,
    destination: LibvirtDriver,
    transport: Transport,
    settings: MigrationSettings,
    *,
    page_references: bool = True,
) -> tuple[StreamMigrationResult, SerialConsole]:
    """Migrate ``guest``; return the result and a console on the destination guest."""
    name = guest.vm.name
    qemu_socket, source_socket, destination_socket = lab.migration_sockets(name)
    destination_console = lab.serial_socket(lab.destination, name)
    xml = await source.ex_domain_xml(guest.vm.id, flags=8)  # VIR_DOMAIN_XML_MIGRATABLE
    result = await migrate_stream(
        source,
        destination,
        guest.vm.id,
        transport=transport,
        qemu_socket=qemu_socket,
        source_socket=source_socket,
        destination_socket=destination_socket,
        settings=settings,
        destination_xml=rewrite_paths(xml, {str(guest.serial_socket): str(destination_console)}),
        page_references=page_references,
    )
    return result, await SerialConsole.connect(destination_console)


def heartbeats(console: SerialConsole) -> list[int]:
    """Every heartbeat number the console printed, in order."""
    return [int(n) for n in re.findall(r"novacron-heartbeat (\d+)", console.output)]


@pytest.fixture
async def guest(lab: Lab) -> AsyncIterator[BootedGuest]:
    """A freshly booted guest on the source (destroyed wherever it ends up)."""
    async with fresh_guest(lab, "mig") as booted:
        yield booted


async def assert_heartbeat_goes_on(moved: SerialConsole) -> None:
    """New heartbeats keep arriving on the destination's console.

    The counter's value is not compared with the source's: under TCG, QEMU 7.2 may lose
    guest writes made during the migration (fixed in 9.0), and the counter was seen to go
    back (20 at the source, 3 at the destination). That the guest was moved and not booted
    anew is shown by libvirt's running reason instead (see below).
    """
    first = await moved.next_heartbeat(0)
    assert await moved.next_heartbeat(first) > first


async def assert_running_only_at_destination(
    result: StreamMigrationResult,
    guest: BootedGuest,
    source: LibvirtDriver,
    destination: LibvirtDriver,
) -> None:
    assert result.vm.state == VMState.RUNNING
    # Started from the incoming migration stream, not booted (VIR_DOMAIN_RUNNING_MIGRATED,
    # VIR_DOMAIN_RUNNING_POSTCOPY, or UNPAUSED when a paused guest was resumed there).
    assert result.vm.extra["libvirt_reason"] in {
        libvirt.VIR_DOMAIN_RUNNING_MIGRATED,
        libvirt.VIR_DOMAIN_RUNNING_POSTCOPY,
        libvirt.VIR_DOMAIN_RUNNING_UNPAUSED,
    }
    assert result.vm.host != guest.vm.host
    assert (await destination.get_vm(guest.vm.name)).state == VMState.RUNNING
    with pytest.raises(NotFoundError):
        await source.get_vm(guest.vm.id)
    assert result.bytes_to_destination > MIB
    # Over DWCP the bridge compresses by default; elsewhere frames carry the stream as is.
    if result.transport == "dwcp":
        assert result.codec == "zstd"
        assert 0 < result.frame_bytes_to_destination < result.bytes_to_destination
    else:
        assert result.codec == "raw"
        assert result.frame_bytes_to_destination >= result.bytes_to_destination
        assert result.referenced_pages == 0  # references need the compressing codec


REFERENCE_CASES = [
    pytest.param("tcp", True, id="tcp"),
    dwcp_param("dwcp", True, id="dwcp-page-refs"),
    dwcp_param("dwcp", False, id="dwcp-no-page-refs"),
]


@pytest.mark.parametrize("transport_name", TRANSPORTS)
async def test_live_migration_with_multifd_keeps_the_heartbeat(
    lab: Lab,
    guest: BootedGuest,
    source_driver: LibvirtDriver,
    destination_driver: LibvirtDriver,
    transport_name: str,
) -> None:
    console = await SerialConsole.connect(guest.serial_socket)
    try:
        await console.next_heartbeat(1)  # the guest has been running a while
        settings = MigrationSettings(
            multifd_channels=2,
            auto_converge=True,
            downtime_limit_ms=300,
            max_bandwidth_bps=2e9,
        )
        result, moved = await migrate(
            lab, guest, source_driver, destination_driver, transport_named(transport_name), settings
        )
    finally:
        await console.close()
    try:
        assert result.transport == transport_name
        assert result.connections == 3, "main channel + 2 multifd channels"
        await assert_running_only_at_destination(result, guest, source_driver, destination_driver)
        await assert_heartbeat_goes_on(moved)
        assert (await moved.run("echo $((7 * 6))")).strip().endswith("42")
    finally:
        await moved.close()


@pytest.mark.parametrize(("transport_name", "page_references"), REFERENCE_CASES)
async def test_paused_guest_arrives_with_its_memory(
    lab: Lab,
    guest: BootedGuest,
    source_driver: LibvirtDriver,
    destination_driver: LibvirtDriver,
    transport_name: str,
    page_references: bool,
) -> None:
    """A paused guest's memory arrives intact, also with pages sent as references.

    Memory is compared only for a paused guest: QEMU 7.2 under TCG may lose writes the
    guest makes during a live migration (fixed in QEMU 9.0), see the module docstring. Over
    DWCP the guest's compressed kernel, still in its RAM, goes as references to the
    destination's copy of the kernel file (the default), or compressed when they are off.
    """
    console = await SerialConsole.connect(guest.serial_socket)
    try:
        out = await console.run(
            "dd if=/dev/urandom of=/root/blob bs=1k count=4096 2>/dev/null; md5sum /root/blob"
        )
        digest = out.split()[0]
        await source_driver.pause(guest.vm.id)
        last = console.last_heartbeat()
        result, moved = await migrate(
            lab,
            guest,
            source_driver,
            destination_driver,
            transport_named(transport_name),
            MigrationSettings(),
            page_references=page_references,
        )
    finally:
        await console.close()
    try:
        if transport_name == "dwcp" and page_references:
            assert result.referenced_pages > 256, "the kernel image's pages are references"
        else:
            assert result.referenced_pages == 0
        assert result.vm.state == VMState.PAUSED
        await destination_driver.resume(guest.vm.name)
        result = result.model_copy(update={"vm": await destination_driver.get_vm(guest.vm.name)})
        await assert_running_only_at_destination(result, guest, source_driver, destination_driver)
        assert (await moved.run("md5sum /root/blob")).split()[0] == digest
        assert await moved.next_heartbeat(last) > last
    finally:
        await moved.close()


async def test_postcopy_migration(
    lab: Lab, guest: BootedGuest, source_driver: LibvirtDriver, destination_driver: LibvirtDriver
) -> None:
    console = await SerialConsole.connect(guest.serial_socket)
    try:
        await console.next_heartbeat(1)  # the guest has been running a while
        settings = MigrationSettings(postcopy=True, max_bandwidth_bps=400e6)
        result, moved = await migrate(
            lab, guest, source_driver, destination_driver, transport_named("tcp"), settings
        )
    finally:
        await console.close()
    try:
        assert result.postcopy_started
        await assert_running_only_at_destination(result, guest, source_driver, destination_driver)
        await assert_heartbeat_goes_on(moved)
    finally:
        await moved.close()


async def test_a_timeout_before_libvirt_started_the_job_still_aborts_it(
    lab: Lab,
    guest: BootedGuest,
    source_driver: LibvirtDriver,
    destination_driver: LibvirtDriver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fault injector: ``virDomain.migrate3`` starts 2 s late (as on a busy host). The timeout
    (1 s) fired before libvirt had a job to abort; the refused abort was ignored, and the
    migration ran to its end: the VM moved although its timeout had expired."""
    real_migrate3 = libvirt.virDomain.migrate3

    def late_migrate3(self: Any, *args: Any, **kwargs: Any) -> Any:
        time.sleep(2.0)  # in libvirt's worker thread, as a slow job start would be
        return real_migrate3(self, *args, **kwargs)

    monkeypatch.setattr(libvirt.virDomain, "migrate3", late_migrate3)
    settings = MigrationSettings(max_bandwidth_bps=8e6, timeout_s=1.0)
    with pytest.raises(MigrationAbortedError, match="runs at the source"):
        await migrate(
            lab, guest, source_driver, destination_driver, transport_named("tcp"), settings
        )
    assert (await source_driver.get_vm(guest.vm.id)).state == VMState.RUNNING
    assert guest.vm.name not in {vm.name for vm in await destination_driver.list_vms()}


async def test_timeout_aborts_and_the_guest_runs_on_at_the_source(
    lab: Lab, guest: BootedGuest, source_driver: LibvirtDriver, destination_driver: LibvirtDriver
) -> None:
    # 8 Mbit/s cannot move 128 MiB within 3 s: the job is aborted before switch-over. (Not
    # 1 s: on a loaded machine libvirt may not have started the job by then, and an abort
    # before that is refused, so the migration would run to its end.)
    settings = MigrationSettings(max_bandwidth_bps=8e6, timeout_s=3.0)
    with pytest.raises(MigrationAbortedError, match="runs at the source"):
        await migrate(
            lab, guest, source_driver, destination_driver, transport_named("tcp"), settings
        )
    assert (await source_driver.get_vm(guest.vm.id)).state == VMState.RUNNING
    assert guest.vm.name not in {vm.name for vm in await destination_driver.list_vms()}
    console = await SerialConsole.connect(guest.serial_socket)
    try:
        first = await console.next_heartbeat(0)
        assert await console.next_heartbeat(first) > first
    finally:
        await console.close()
