"""The driver managing a real tiny Linux guest under QEMU (TCG) through a libvirt daemon.

The guest prints ``novacron-heartbeat <n>`` on its serial console every 200 ms and runs a
shell there; the tests read the heartbeat and run commands through the console.
"""

from __future__ import annotations

import asyncio
import secrets

import pytest

pytest.importorskip("libvirt", reason="libvirt-python is not installed (needs libvirt-dev)")

from novacron_libvirt.driver import LibvirtDriver
from novacron_libvirt.testing.console import SerialConsole
from novacron_libvirt.testing.lab import BootedGuest, Lab
from novacron_sdk.errors import InvalidStateError
from novacron_sdk.models import DriverFeature, VMEvent, VMState

pytestmark = pytest.mark.slow

# Writes 2 MiB of random bytes to the guest's RAM-backed root and prints their digest.
MAKE_BLOB = "dd if=/dev/urandom of=/root/blob bs=1k count=2048 2>/dev/null; md5sum /root/blob"
CHECK_BLOB = "md5sum /root/blob"


async def test_driver_sees_the_running_guest(
    source_driver: LibvirtDriver, booted_guest: BootedGuest, lab: Lab
) -> None:
    assert source_driver.domain_type in {"qemu", "kvm"}
    assert DriverFeature.PAUSE in source_driver.features
    listed = {vm.id: vm for vm in await source_driver.list_vms()}
    assert listed[booted_guest.vm.id].state == VMState.RUNNING
    vm = await source_driver.get_vm("session-guest")
    assert vm.id == booted_guest.vm.id
    assert (vm.vcpus, vm.memory_mib) == (1, 128)
    assert vm.host == lab.source.host_uuid
    (host,) = await source_driver.list_hosts()
    assert host.id == lab.source.host_uuid
    assert host.vcpus > 0


async def test_guest_answers_on_its_serial_console(booted_guest: BootedGuest) -> None:
    console = await SerialConsole.connect(booted_guest.serial_socket)
    try:
        first = await console.next_heartbeat(0)
        assert await console.next_heartbeat(first) > first
        assert (await console.run("echo $((6 * 7))")).strip().endswith("42")
        assert (await console.run("uname -s")).strip() == "Linux"
    finally:
        await console.close()


async def test_pause_stops_the_guest_and_resume_continues_it(
    source_driver: LibvirtDriver, booted_guest: BootedGuest
) -> None:
    events: asyncio.Queue[VMEvent] = asyncio.Queue()
    source_driver.set_event_sink(events.put_nowait)
    console = await SerialConsole.connect(booted_guest.serial_socket)
    try:
        await console.next_heartbeat(0)
        paused = await source_driver.pause(booted_guest.vm.id)
        assert paused.state == VMState.PAUSED
        with pytest.raises(InvalidStateError):
            await source_driver.pause(booted_guest.vm.id)
        # What the guest printed before the pause may still be on its way to the console:
        # let it arrive (two heartbeat periods) before the window in which nothing may.
        await asyncio.sleep(0.4)
        frozen = console.last_heartbeat()
        await asyncio.sleep(1.0)  # five heartbeat periods
        assert console.last_heartbeat() == frozen, "a paused guest printed a heartbeat"
        resumed = await source_driver.resume(booted_guest.vm.id)
        assert resumed.state == VMState.RUNNING
        assert await console.next_heartbeat(frozen) > frozen
        states = []
        while VMState.RUNNING not in states:
            event = await asyncio.wait_for(events.get(), timeout=30)
            if event.vm_id == booted_guest.vm.id:
                states.append(event.state)
        assert states == [VMState.PAUSED, VMState.RUNNING]
    finally:
        await console.close()
        # A guest left paused by a failure here would fail the session's later tests too.
        if (await source_driver.get_vm(booted_guest.vm.id)).state == VMState.PAUSED:
            await source_driver.resume(booted_guest.vm.id)


async def test_save_and_restore_keep_guest_memory(
    source_driver: LibvirtDriver, booted_guest: BootedGuest, lab: Lab
) -> None:
    console = await SerialConsole.connect(booted_guest.serial_socket)
    try:
        digest = (await console.run(MAKE_BLOB)).split()[0]
        before = console.last_heartbeat()
    finally:
        await console.close()
    image = lab.source.shared_dir("saves") / f"session-guest-{secrets.token_hex(3)}.save"
    saved = await source_driver.ex_save(booted_guest.vm.id, str(image))
    assert saved.state == VMState.STOPPED
    restored = await source_driver.ex_restore(str(image))
    assert restored.id == booted_guest.vm.id
    assert restored.state == VMState.RUNNING
    console = await SerialConsole.connect(booted_guest.serial_socket)
    try:
        # The counter goes on from where it was: the guest was restored, not rebooted.
        assert await console.next_heartbeat(before) > before
        assert min_heartbeat_after_restore(console) > before
        assert (await console.run(CHECK_BLOB)).split()[0] == digest
    finally:
        await console.close()


def min_heartbeat_after_restore(console: SerialConsole) -> int:
    """The lowest heartbeat printed on a console opened after a restore."""
    import re

    beats = [int(n) for n in re.findall(r"novacron-heartbeat (\d+)", console.output)]
    return min(beats)


async def test_stop_forces_off_then_start_boots_again(
    source_driver: LibvirtDriver, booted_guest: BootedGuest
) -> None:
    # busybox has no ACPI daemon: the graceful request is ignored and stop() forces it off.
    stopped = await source_driver.stop(booted_guest.vm.id)
    assert stopped.state == VMState.STOPPED
    with pytest.raises(InvalidStateError):
        await source_driver.resume(booted_guest.vm.id)
    started = await source_driver.start(booted_guest.vm.id)
    assert started.state == VMState.RUNNING
    console = await SerialConsole.connect(booted_guest.serial_socket)
    try:
        await console.wait_for(r"novacron-heartbeat 1\b", timeout_s=120)
    finally:
        await console.close()


async def test_destroy_removes_the_guest(
    source_driver: LibvirtDriver, booted_guest: BootedGuest
) -> None:
    await source_driver.destroy(booted_guest.vm.id)
    assert booted_guest.vm.id not in {vm.id for vm in await source_driver.list_vms()}
