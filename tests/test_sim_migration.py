"""The sim migration ends: source and sink behaviour beyond the generic contract."""

from __future__ import annotations

import asyncio
import json

import pytest

from novacron_sdk.builtin.sim.driver import SimDriver
from novacron_sdk.errors import DriverError, InvalidStateError, QuotaExceededError
from novacron_sdk.hypervisors.interface import MigrationSourceInfo
from novacron_sdk.models import VMEvent, VMSpec, VMState
from novacron_sdk.testing.compute import copy_pages, wait_for_dirty_pages
from novacron_sdk.testing.waiting import WITHIN_S

PAGES_64_MIB = 64 * 256
BUSY = {"workload": {"pattern": "hot-set", "rate_mbps": 20, "seed": 1}, "fill": "mixed"}


@pytest.fixture
async def source_host():
    driver = SimDriver({"host_name": "src", "memory_mib": 1024})
    yield driver
    await driver.close()


@pytest.fixture
async def sink_host():
    driver = SimDriver({"host_name": "dst", "memory_mib": 256})
    yield driver
    await driver.close()


def vm_spec(name: str, extra=None, memory_mib: int = 64) -> VMSpec:
    return VMSpec(name=name, memory_mib=memory_mib, extra=BUSY if extra is None else extra)


async def migrate(source, sink) -> None:
    """Pre-copy two rounds, pause, copy the rest, hand over the device state."""
    await source.start_tracking()
    await copy_pages(source, sink, await source.collect_dirty())
    await copy_pages(source, sink, await wait_for_dirty_pages(source, WITHIN_S))
    await source.pause()
    await copy_pages(source, sink, await source.collect_dirty())
    await sink.set_device_state(await source.device_state())


async def test_guest_keeps_running_while_migrating(source_host, sink_host):
    vm = await source_host.create_vm(vm_spec("busy"))
    workload = await source_host.ex_workload(vm.id)
    source = await source_host.open_migration_source(vm.id)
    assert (await source_host.get_vm(vm.id)).state == VMState.MIGRATING
    await source.start_tracking()
    await source.collect_dirty()
    assert await wait_for_dirty_pages(source, WITHIN_S), (
        "the guest stopped writing during migration"
    )
    assert workload.running
    assert not workload.paused
    await source.rollback()


async def test_operations_on_a_migrating_vm_are_refused(source_host):
    vm = await source_host.create_vm(vm_spec("locked"))
    source = await source_host.open_migration_source(vm.id)
    with pytest.raises(InvalidStateError, match="cannot stop"):
        await source_host.stop(vm.id)
    with pytest.raises(InvalidStateError, match="while it migrates"):
        await source_host.destroy(vm.id)
    with pytest.raises(InvalidStateError, match="only a running VM"):
        await source_host.open_migration_source(vm.id)
    with pytest.raises(InvalidStateError, match="while it migrates"):
        await source_host.ex_set_workload(vm.id, {"pattern": "idle"})
    with pytest.raises(InvalidStateError, match="pause"):
        await source.device_state()
    await source.rollback()
    await source.rollback()
    with pytest.raises(InvalidStateError, match="already rolled back"):
        await source.release()
    await source_host.stop(vm.id)
    with pytest.raises(InvalidStateError, match="stopped"):
        await source_host.open_migration_source(vm.id)


async def test_migration_moves_memory_and_continues_the_workload(source_host, sink_host):
    source_events: list[VMEvent] = []
    sink_events: list[VMEvent] = []
    source_host.set_event_sink(source_events.append)
    sink_host.set_event_sink(sink_events.append)
    vm = await source_host.create_vm(vm_spec("mover", extra={**BUSY, "seed": 2}))
    source_workload = await source_host.ex_workload(vm.id)
    source = await source_host.open_migration_source(vm.id)
    sink = await sink_host.open_migration_sink(source.info())
    [incoming] = await sink_host.list_vms()
    assert incoming.state == VMState.MIGRATING
    await migrate(source, sink)
    state = json.loads(await source.device_state())
    paused_at = source_workload.pages_written
    assert state["workload_state"]["pages_written"] == paused_at
    assert await source_host.ex_memory_digest(vm.id) == await sink_host.ex_memory_digest(
        incoming.id
    )
    moved = await sink.activate()
    await source.release()
    assert moved.state == VMState.RUNNING
    assert moved.host == "dst"
    sink_workload = await sink_host.ex_workload(moved.id)
    assert sink_workload.spec == source_workload.spec
    assert sink_workload.pages_written >= paused_at
    assert sink_workload.running
    assert await source_host.list_vms() == []
    assert [(e.state, e.reason) for e in source_events][-2:] == [
        (VMState.MIGRATING, "migration started"),
        (VMState.TERMINATED, "migrated away"),
    ]
    assert [e.state for e in sink_events] == [VMState.MIGRATING, VMState.RUNNING]


async def test_pause_means_no_more_writes(source_host, sink_host):
    vm = await source_host.create_vm(vm_spec("frozen", extra={"workload": {"pattern": "uniform"}}))
    workload = await source_host.ex_workload(vm.id)
    source = await source_host.open_migration_source(vm.id)
    await source.start_tracking()
    await source.collect_dirty()
    await source.pause()
    written = workload.pages_written
    digest = await source_host.ex_memory_digest(vm.id)
    await source.collect_dirty()
    await asyncio.sleep(0.05)
    assert await source.collect_dirty() == []
    assert workload.pages_written == written
    assert await source_host.ex_memory_digest(vm.id) == digest
    await source.rollback()


async def test_rollback_restores_the_source_exactly(source_host, sink_host):
    vm = await source_host.create_vm(vm_spec("stay", extra={"fill": "mixed"}))
    memory = await source_host.ex_memory(vm.id)
    memory.write_page(100, b"\x5a" * 4096)  # content the spec alone could not rebuild
    digest = await source_host.ex_memory_digest(vm.id)
    source = await source_host.open_migration_source(vm.id)
    sink = await sink_host.open_migration_sink(source.info())
    await source.start_tracking()
    await copy_pages(source, sink, await source.collect_dirty())
    await source.set_throttle(0.8)
    await source.pause()
    await sink.abort()
    await source.rollback()
    workload = await source_host.ex_workload(vm.id)
    assert (workload.throttle_fraction, workload.paused) == (0.0, False)
    assert not memory.tracking
    assert (await source_host.get_vm(vm.id)).state == VMState.RUNNING
    assert await source_host.ex_memory_digest(vm.id) == digest
    assert await sink_host.list_vms() == []


async def test_sink_checks_capacity_and_frees_it_on_abort(sink_host):
    info = MigrationSourceInfo(spec=vm_spec("huge", memory_mib=512), page_count=512 * 256)
    with pytest.raises(QuotaExceededError, match="MiB of memory free"):
        await sink_host.open_migration_sink(info)
    fits = MigrationSourceInfo(spec=vm_spec("fits", memory_mib=192), page_count=192 * 256)
    sink = await sink_host.open_migration_sink(fits)
    with pytest.raises(QuotaExceededError):
        await sink_host.open_migration_sink(
            MigrationSourceInfo(spec=vm_spec("second", memory_mib=128), page_count=128 * 256)
        )
    with pytest.raises(DriverError, match="already exists"):
        await sink_host.open_migration_sink(fits)
    await sink.abort()
    await sink.abort()
    assert await sink_host.list_vms() == []
    second = await sink_host.open_migration_sink(fits)
    await second.abort()


async def test_sink_rejects_bad_input(sink_host):
    info = MigrationSourceInfo(spec=vm_spec("strict"), page_count=PAGES_64_MIB)
    with pytest.raises(DriverError, match="inconsistent"):
        await sink_host.open_migration_sink(info.model_copy(update={"page_count": 10}))
    with pytest.raises(DriverError, match="page-level"):
        await sink_host.open_migration_sink(info.model_copy(update={"kind": "stream"}))
    sink = await sink_host.open_migration_sink(info)
    with pytest.raises(DriverError, match="needs 8192 bytes"):
        await sink.write_pages([0, 1], bytes(4096))
    with pytest.raises(InvalidStateError, match="set_device_state"):
        await sink.activate()
    with pytest.raises(DriverError, match=r"workload_state: Field required"):
        await sink.set_device_state(
            json.dumps(
                {
                    "format": "novacron-sim-device-state/1",
                    "name": "strict",
                    "vcpus": 1,
                    "memory_mib": 64,
                    "page_size": 4096,
                    "page_count": PAGES_64_MIB,
                    "workload": {},
                }
            ).encode()
        )
    with pytest.raises(DriverError, match="holds 16384 pages"):
        await sink.set_device_state(
            json.dumps(
                {
                    "format": "novacron-sim-device-state/1",
                    "name": "strict",
                    "vcpus": 1,
                    "memory_mib": 64,
                    "page_size": 4096,
                    "page_count": 3,
                    "workload": {},
                    "workload_state": {},
                }
            ).encode()
        )
    await sink.abort()
    with pytest.raises(InvalidStateError, match="already aborted"):
        await sink.write_pages([0], bytes(4096))


async def test_trace_workload_migrates(source_host, sink_host, tmp_path):
    trace = tmp_path / "t.trace"
    trace.write_text("".join(f"{n / 100:.2f} {n * 7 % PAGES_64_MIB}\n" for n in range(200)))
    extra = {"workload": {"pattern": "trace", "trace_path": str(trace)}, "fill": "zero"}
    vm = await source_host.create_vm(vm_spec("traced", extra=extra))
    source = await source_host.open_migration_source(vm.id)
    sink = await sink_host.open_migration_sink(source.info())
    await migrate(source, sink)
    digest = await source_host.ex_memory_digest(vm.id)
    [incoming] = await sink_host.list_vms()
    assert await sink_host.ex_memory_digest(incoming.id) == digest
    moved = await sink.activate()
    await source.release()
    assert (await sink_host.ex_workload(moved.id)).spec.pattern == "trace"
