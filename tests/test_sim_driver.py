"""SimDriver: lifecycle, capacity, events, catalogue, extras and the shared state file."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import textwrap

import pytest

from novacron_sdk.builtin.sim.driver import SimDriver
from novacron_sdk.builtin.sim.memory import GuestMemory
from novacron_sdk.builtin.sim.workloads import WorkloadSpec
from novacron_sdk.errors import (
    DriverError,
    FeatureNotSupportedError,
    InvalidStateError,
    NotFoundError,
    QuotaExceededError,
)
from novacron_sdk.hypervisors.interface import MigrationSourceInfo
from novacron_sdk.models import DriverFeature, VMEvent, VMSpec, VMState
from novacron_sdk.plugin.manager import build_plugin_manager
from novacron_sdk.testing.waiting import eventually

MIB = 1024 * 1024
IDLE = {"fill": "zero"}


def spec(name: str, **kwargs) -> VMSpec:
    kwargs.setdefault("memory_mib", 64)
    kwargs.setdefault("extra", IDLE)
    return VMSpec(name=name, **kwargs)


@pytest.fixture
async def sim():
    driver = SimDriver({"host_name": "test-host", "vcpus": 8, "memory_mib": 1024})
    yield driver
    await driver.close()


def test_registered_lazily_and_labelled_as_a_simulator():
    manager = build_plugin_manager(autoload=False)
    assert manager.hypervisors.get("sim") is SimDriver
    assert "imulat" in SimDriver.description
    assert "SIMULATED" in (SimDriver.__doc__ or "")


async def test_host_capacity_and_labels(sim):
    await sim.create_vm(spec("a", vcpus=2))
    [host] = await sim.list_hosts()
    assert host.labels == {"simulated": "true"}
    assert (host.vcpus, host.memory_mib) == (8, 1024)
    assert host.extra["used_vcpus"] == 2
    assert host.extra["used_memory_mib"] == 64
    [location] = await sim.list_locations()
    assert location.id == host.id == "test-host"


async def test_default_host_name_and_bad_settings():
    assert SimDriver().host_name.startswith("sim-")
    with pytest.raises(DriverError, match="must be integers"):
        SimDriver({"vcpus": "many"})


async def test_ids_and_lookup_by_name(sim):
    vm = await sim.create_vm(spec("web-1"))
    assert re.fullmatch(r"sim-[0-9a-f]{8}", vm.id)
    assert vm.state == VMState.RUNNING
    assert vm.extra["simulated"] is True
    assert (await sim.get_vm("web-1")).id == vm.id
    with pytest.raises(DriverError, match="already exists") as caught:
        await sim.create_vm(spec("web-1"))
    assert caught.value.code == "DuplicateName"


async def test_capacity_is_enforced_and_freed(sim):
    big = await sim.create_vm(spec("big", memory_mib=1000, vcpus=1))
    with pytest.raises(QuotaExceededError, match="24 MiB of memory free"):
        await sim.create_vm(spec("more"))
    await sim.destroy(big.id)
    await sim.create_vm(spec("more"))
    with pytest.raises(QuotaExceededError, match="vCPUs free"):
        await sim.create_vm(spec("wide", vcpus=8))
    assert [vm.name for vm in await sim.list_vms()] == ["more"]


async def test_vm_larger_than_the_machine_fails_cleanly_and_leaves_nothing(sim, small_machine):
    events: list[VMEvent] = []
    sim.set_event_sink(events.append)
    with pytest.raises(QuotaExceededError, match="cannot allocate 512 MiB") as caught:
        await sim.create_vm(spec("huge", memory_mib=512))
    assert "use a smaller memory_mib" in str(caught.value)
    assert "Errno 12" in str(caught.value)
    assert await sim.list_vms() == []
    [host] = await sim.list_hosts()
    assert (host.extra["used_memory_mib"], host.extra["used_vcpus"]) == (0, 0)
    assert [e.state for e in events] == [VMState.PENDING, VMState.TERMINATED]
    assert events[-1].reason.startswith("creation failed: this machine cannot allocate")
    # The name and the capacity are free again.
    assert (await sim.create_vm(spec("huge", memory_mib=256))).state == VMState.RUNNING


async def test_incoming_vm_larger_than_the_machine_fails_cleanly(sim, small_machine):
    info = MigrationSourceInfo(spec=spec("incoming", memory_mib=512), page_count=512 * 256)
    with pytest.raises(QuotaExceededError, match="cannot allocate 512 MiB"):
        await sim.open_migration_sink(info)
    assert await sim.list_vms() == []
    [host] = await sim.list_hosts()
    assert host.extra["used_memory_mib"] == 0


async def test_invalid_transitions_say_what_to_do(sim):
    vm = await sim.create_vm(spec("t"))
    with pytest.raises(InvalidStateError, match=r"cannot start VM 't'.*it is running"):
        await sim.start(vm.id)
    with pytest.raises(InvalidStateError, match="cannot resume"):
        await sim.resume(vm.id)
    await sim.stop(vm.id)
    with pytest.raises(InvalidStateError, match="cannot reboot"):
        await sim.reboot(vm.id)
    with pytest.raises(InvalidStateError, match="cannot pause"):
        await sim.pause(vm.id)
    with pytest.raises(InvalidStateError, match="cannot stop"):
        await sim.stop(vm.id)


async def test_stop_keeps_memory_and_ends_the_workload_thread(sim):
    vm = await sim.create_vm(spec("keep", extra={"workload": {"pattern": "uniform"}}))
    workload = await sim.ex_workload(vm.id)
    memory = await sim.ex_memory(vm.id)
    assert workload.running
    await sim.stop(vm.id)
    assert not workload.running
    written = workload.pages_written
    digest = await sim.ex_memory_digest(vm.id)
    await asyncio.sleep(0.05)
    assert await sim.ex_memory_digest(vm.id) == digest, "a stopped VM changed its memory"
    await sim.start(vm.id)
    assert workload.running
    assert await sim.ex_memory(vm.id) is memory

    await eventually(lambda: workload.pages_written > written, "the workload continues after start")


async def test_reboot_keeps_memory(sim):
    vm = await sim.create_vm(spec("rb"))
    memory = await sim.ex_memory(vm.id)
    memory.write_page(3, b"\x01" * 4096)
    digest = await sim.ex_memory_digest(vm.id)
    assert (await sim.reboot(vm.id)).state == VMState.RUNNING
    assert await sim.ex_memory_digest(vm.id) == digest


async def test_destroy_frees_memory(sim):
    vm = await sim.create_vm(spec("gone", extra={"workload": {"pattern": "hot-set"}}))
    memory = await sim.ex_memory(vm.id)
    workload = await sim.ex_workload(vm.id)
    await sim.destroy(vm.id)
    assert memory.closed
    assert not workload.running
    with pytest.raises(NotFoundError, match="no VM"):
        await sim.ex_memory(vm.id)


async def test_every_state_change_is_an_event(sim):
    events: list[VMEvent] = []
    sim.set_event_sink(events.append)
    vm = await sim.create_vm(spec("ev"))
    await sim.pause(vm.id)
    await sim.resume(vm.id)
    await sim.stop(vm.id)
    await sim.start(vm.id)
    await sim.reboot(vm.id)
    await sim.destroy(vm.id)
    assert [e.state for e in events] == [
        VMState.PENDING,
        VMState.RUNNING,
        VMState.PAUSED,
        VMState.RUNNING,
        VMState.STOPPED,
        VMState.RUNNING,
        VMState.REBOOTING,
        VMState.RUNNING,
        VMState.TERMINATED,
    ]
    assert {e.vm_id for e in events} == {vm.id}
    assert all(e.driver == "sim" for e in events)
    sim.set_event_sink(None)
    await sim.create_vm(spec("quiet"))
    assert len(events) == 9


async def test_a_failing_event_sink_does_not_break_operations(sim, caplog):
    def broken(event: VMEvent) -> None:
        raise RuntimeError("listener bug")

    sim.set_event_sink(broken)
    vm = await sim.create_vm(spec("robust"))
    assert vm.state == VMState.RUNNING
    assert "sim event sink failed" in caplog.text


async def test_bad_extra_names_the_field(sim):
    with pytest.raises(DriverError, match=r"extra\.workload\.rate_mbps"):
        await sim.create_vm(spec("bad", extra={"workload": {"rate_mbps": "fast"}}))
    with pytest.raises(DriverError, match=r"extra\.colour"):
        await sim.create_vm(spec("bad", extra={"colour": "blue"}))
    with pytest.raises(DriverError, match=r"extra\.fill"):
        await sim.create_vm(spec("bad", extra={"fill": "random"}))
    assert await sim.list_vms() == []


async def test_images_sizes_locations(sim, tmp_path):
    image = tmp_path / "guest.img"
    image.write_bytes(b"\xab" * 10000)
    (tmp_path / "notes.txt").write_text("not an image")
    driver = SimDriver({"image_dir": str(tmp_path), "memory_mib": 1024})
    try:
        ids = [i.id for i in await driver.list_images()]
        assert ids == ["sim-empty", "sim-linux-like", "guest.img"]
        vm = await driver.create_vm(spec("from-image", image="guest.img"))
        memory = await driver.ex_memory(vm.id)
        assert memory.read_pages([0, 1, 2]) == b"\xab" * 10000 + bytes(3 * 4096 - 10000)
        empty = await driver.create_vm(spec("empty", image="sim-empty", extra={}))
        reference = GuestMemory(64 * MIB)
        assert await driver.ex_memory_digest(empty.id) == reference.digest()
        reference.fill("mixed", 0)
        linux = await driver.create_vm(spec("linux", image="sim-linux-like", extra={}))
        assert await driver.ex_memory_digest(linux.id) == reference.digest()
        reference.close()
        with pytest.raises(NotFoundError, match="no sim image 'nope'"):
            await driver.create_vm(spec("x", image="nope"))
    finally:
        await driver.close()
    sizes = {s.id: s for s in await sim.list_sizes()}
    assert sizes["sim.small"].memory_mib == 512
    assert "sim.xlarge" in sizes
    vm = await sim.create_vm(VMSpec(name="sized", size="sim.tiny", extra=IDLE))
    assert vm.memory_mib == 64
    with pytest.raises(NotFoundError, match="no sim size"):
        await sim.create_vm(VMSpec(name="sized2", size="sim.huge"))
    with pytest.raises(NotFoundError, match="no sim location"):
        await sim.create_vm(spec("placed", location="elsewhere"))


async def test_memory_image_extra_and_oversized_image(sim, tmp_path):
    image = tmp_path / "dump.raw"
    image.write_bytes(b"\x01" * 4096)
    vm = await sim.create_vm(spec("dump", extra={"memory_image": str(image)}))
    assert (await sim.ex_memory(vm.id)).read_pages([0]) == b"\x01" * 4096
    image.write_bytes(bytes(65 * MIB))
    events: list[VMEvent] = []
    sim.set_event_sink(events.append)
    with pytest.raises(DriverError, match="bytes of memory"):
        await sim.create_vm(spec("too-big", extra={"memory_image": str(image)}))
    assert [v.name for v in await sim.list_vms()] == ["dump"]
    assert [e.state for e in events] == [VMState.PENDING, VMState.TERMINATED]
    assert "creation failed" in events[-1].reason


async def test_pagination_tokens(sim):
    for n in range(5):
        await sim.create_vm(spec(f"p{n}"))
    page = await sim._list_vms_page(None, 2)
    assert [vm.name for vm in page.items] == ["p0", "p1"]
    assert page.next_token is not None
    last = await sim._list_vms_page("4", 2)
    assert [vm.name for vm in last.items] == ["p4"]
    assert last.next_token is None
    with pytest.raises(DriverError, match="invalid page token"):
        await sim._list_vms_page("abc", 2)
    with pytest.raises(DriverError, match="page_size"):
        await sim._list_vms_page(None, 0)


async def test_set_workload(sim):
    vm = await sim.create_vm(spec("w"))
    assert (await sim.ex_workload(vm.id)).spec.pattern == "idle"
    updated = await sim.ex_set_workload(vm.id, WorkloadSpec(pattern="sequential", rate_mbps=4))
    assert updated.extra["workload"] == "sequential"
    workload = await sim.ex_workload(vm.id)
    assert workload.running

    await eventually(lambda: workload.pages_written > 0, "the new workload writes")
    await sim.ex_set_workload(vm.id, {"pattern": "idle"})
    assert not workload.running
    with pytest.raises(DriverError, match=r"extra\.workload\.pattern"):
        await sim.ex_set_workload(vm.id, {"pattern": "bogus"})


async def test_features_outside_the_set_are_refused():
    class Minimal(SimDriver):
        features = frozenset({DriverFeature.CREATE, DriverFeature.DESTROY})

    driver = Minimal()
    try:
        for call in (driver.list_images, driver.list_sizes, driver.list_hosts):
            with pytest.raises(FeatureNotSupportedError, match="does not support"):
                await call()
        with pytest.raises(FeatureNotSupportedError):
            await driver.pause("anything")
    finally:
        await driver.close()


async def test_state_file_shares_vms_between_drivers(tmp_path):
    path = tmp_path / "sim.json"
    settings = {"state_path": str(path), "host_name": "shared"}
    first, second = SimDriver(settings), SimDriver(settings)
    try:
        vm = await first.create_vm(spec("shared", extra={"workload": {"pattern": "uniform"}}))
        stored = json.loads(path.read_text())
        assert [v["id"] for v in stored["vms"]] == [vm.id]
        seen = await second.get_vm("shared")
        assert (seen.id, seen.state) == (vm.id, VMState.RUNNING)
        workload = await first.ex_workload(vm.id)
        await second.stop(vm.id)
        assert (await first.get_vm(vm.id)).state == VMState.STOPPED
        assert not workload.running, "the owner stops its workload when it sees the change"
        memory = await first.ex_memory(vm.id)
        await second.destroy(vm.id)
        assert await first.list_vms() == []
        assert memory.closed
    finally:
        await first.close()
        await second.close()


async def test_state_file_rebuilds_memory_from_the_spec(tmp_path):
    settings = {"state_path": str(tmp_path / "sim.json")}
    first, second = SimDriver(settings), SimDriver(settings)
    try:
        vm = await first.create_vm(spec("same", extra={"fill": "mixed", "seed": 4}))
        assert await second.ex_memory_digest(vm.id) == await first.ex_memory_digest(vm.id)
    finally:
        await first.close()
        await second.close()


def test_state_file_works_across_processes(tmp_path):
    path = tmp_path / "sim.json"
    script = textwrap.dedent(
        f"""
        import asyncio
        from novacron_sdk.builtin.sim.driver import SimDriver
        from novacron_sdk.models import VMSpec

        async def main():
            driver = SimDriver({{"state_path": {str(path)!r}}})
            vm = await driver.create_vm(VMSpec(name="other-process", memory_mib=64))
            await driver.close()
            print(vm.id)

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    vm_id = done.stdout.strip()

    async def check():
        driver = SimDriver({"state_path": str(path)})
        try:
            vm = await driver.get_vm("other-process")
            assert (vm.id, vm.state) == (vm_id, VMState.RUNNING)
            await driver.destroy(vm_id)
        finally:
            await driver.close()

    asyncio.run(check())
    assert json.loads(path.read_text())["vms"] == []


async def test_corrupt_state_file_is_reported(tmp_path):
    path = tmp_path / "sim.json"
    path.write_text('{"vms": [{"id": 1}]}')
    driver = SimDriver({"state_path": str(path)})
    try:
        with pytest.raises(DriverError, match=r"corrupt.*move it away"):
            await driver.list_vms()
    finally:
        await driver.close()


def test_unknown_settings_are_refused_with_the_closest_key() -> None:
    """A typo in drivers.settings.sim is an error, not a silently ignored key."""
    expected = r"sim\.state_pth: unknown key \(did you mean 'state_path'\?\)"
    with pytest.raises(DriverError, match=expected):
        SimDriver({"state_pth": "/tmp/x.json"})
    with pytest.raises(DriverError, match="known: host_name, vcpus, memory_mib"):
        SimDriver({"disks": [1, 2]})
    assert SimDriver({"host_name": "h", "vcpus": 2, "memory_mib": 64}).capacity_vcpus == 2
