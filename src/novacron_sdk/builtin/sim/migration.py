"""The two ends of a page-level live migration of a sim VM; the engine moves the pages between them.

The source exposes the running guest's memory with dirty tracking, throttle and pause; the
sink receives pages into fresh memory and, once activated, resumes the workload from the
state exported in the device state.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from novacron_sdk.builtin.sim.memory import GuestMemory
from novacron_sdk.builtin.sim.workloads import Workload, WorkloadSpec
from novacron_sdk.errors import DriverError, InvalidStateError
from novacron_sdk.hypervisors.interface import (
    MigrationSink,
    MigrationSource,
    MigrationSourceInfo,
)
from novacron_sdk.models import VM

if TYPE_CHECKING:
    from novacron_sdk.builtin.sim.driver import SimDriver
    from novacron_sdk.builtin.sim.store import SimVMRecord

DEVICE_STATE_FORMAT = "novacron-sim-device-state/1"
# Batches smaller than this are copied inline: a thread hop would cost more than the copy.
_INLINE_PAGES = 64


class SimDeviceState(BaseModel):
    """The sim VM's "CPU and device state": what the workload needs to continue elsewhere."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["novacron-sim-device-state/1"]
    name: str
    vcpus: int = Field(ge=1)
    memory_mib: int = Field(ge=1)
    tags: dict[str, str] = Field(default_factory=dict)
    page_size: int = Field(gt=0)
    page_count: int = Field(gt=0)
    workload: WorkloadSpec
    workload_state: dict[str, Any]


def _memory(record: SimVMRecord) -> GuestMemory:
    if record.memory is None:
        msg = f"VM {record.id} has no memory in this process any more (released or aborted)"
        raise InvalidStateError(msg)
    return record.memory


def _workload(record: SimVMRecord) -> Workload:
    workload = record.workload
    if workload is None:
        msg = f"VM {record.id} has no workload in this process any more (released)"
        raise InvalidStateError(msg)
    return workload


class SimMigrationSource(MigrationSource):
    """The source end: the guest keeps running (listed as migrating) until paused."""

    def __init__(self, driver: SimDriver, record: SimVMRecord) -> None:
        self._driver = driver
        self._record = record
        self._paused = False
        self._finished: str | None = None

    def _check_open(self) -> None:
        if self._finished is not None:
            msg = f"this migration source was already {self._finished}"
            raise InvalidStateError(msg)

    def info(self) -> MigrationSourceInfo:
        """The VM's spec and memory geometry."""
        memory = _memory(self._record)
        return MigrationSourceInfo(
            spec=self._record.spec, page_size=memory.page_size, page_count=memory.page_count
        )

    async def start_tracking(self) -> None:
        """Start dirty tracking; the first collection returns every page."""
        self._check_open()
        _memory(self._record).start_tracking()

    async def collect_dirty(self) -> list[int]:
        """Pages written since the previous call, sorted."""
        self._check_open()
        return _memory(self._record).collect_dirty()

    async def read_pages(self, indices: Sequence[int]) -> bytes:
        """The current content of ``indices``."""
        self._check_open()
        memory = _memory(self._record)
        if len(indices) <= _INLINE_PAGES:
            return memory.read_pages(indices)
        return await asyncio.to_thread(memory.read_pages, indices)

    async def set_throttle(self, fraction: float) -> None:
        """Slow the workload to ``1 - fraction`` of its rate."""
        self._check_open()
        _workload(self._record).throttle(fraction)

    async def pause(self) -> None:
        """Stop the workload; when this returns, no page changes any more."""
        self._check_open()
        _workload(self._record).pause()
        self._paused = True

    async def device_state(self) -> bytes:
        """The workload's spec and progress as JSON, taken while paused."""
        self._check_open()
        if not self._paused:
            msg = "device_state() needs the guest paused: call pause() first"
            raise InvalidStateError(msg)
        record, memory, workload = self._record, _memory(self._record), _workload(self._record)
        state = SimDeviceState(
            format=DEVICE_STATE_FORMAT,
            name=record.spec.name,
            vcpus=record.spec.vcpus,
            memory_mib=record.spec.memory_mib,
            tags=dict(record.spec.tags),
            page_size=memory.page_size,
            page_count=memory.page_count,
            workload=workload.spec,
            workload_state=workload.state(),
        )
        return state.model_dump_json().encode()

    async def release(self) -> None:
        """The destination runs the VM now: destroy this copy."""
        self._check_open()
        self._finished = "released"
        await self._driver._end_migration(self._record, keep=False, reason="migrated away")

    async def rollback(self) -> None:
        """Lift the throttle, resume the guest, stop tracking: the VM runs on here, untouched."""
        if self._finished == "rolled back":
            return
        self._check_open()
        self._finished = "rolled back"
        workload = _workload(self._record)
        workload.throttle(0.0)
        workload.resume()
        _memory(self._record).stop_tracking()
        await self._driver._end_migration(self._record, keep=True, reason="migration rolled back")


class SimMigrationSink(MigrationSink):
    """The destination end: fresh memory filled by the engine, resumed only on activate()."""

    def __init__(self, driver: SimDriver, record: SimVMRecord) -> None:
        self._driver = driver
        self._record = record
        self._device_state: SimDeviceState | None = None
        self._finished: str | None = None

    def _check_open(self) -> GuestMemory:
        if self._finished is not None:
            msg = f"this migration sink was already {self._finished}"
            raise InvalidStateError(msg)
        return _memory(self._record)

    async def write_pages(self, indices: Sequence[int], data: bytes) -> None:
        """Store pages received from the source."""
        memory = self._check_open()
        if len(indices) <= _INLINE_PAGES:
            memory.write_pages(indices, data)
        else:
            await asyncio.to_thread(memory.write_pages, indices, data)

    async def page_digests(self, indices: Sequence[int]) -> list[bytes]:
        """The SDK page digests (``migration.digests.page_digest``) of ``indices`` held here."""
        memory = self._check_open()
        if len(indices) <= _INLINE_PAGES:
            return memory.page_digests(indices)
        return await asyncio.to_thread(memory.page_digests, indices)

    async def set_device_state(self, state: bytes) -> None:
        """Check and keep the source's device state for activate()."""
        memory = self._check_open()
        try:
            parsed = SimDeviceState.model_validate_json(state)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(document)'}: {e['msg']}"
                for e in exc.errors()
            )
            msg = f"invalid sim device state: {problems}"
            raise DriverError(msg) from exc
        if (parsed.page_size, parsed.page_count) != (memory.page_size, memory.page_count):
            msg = (
                f"device state is for {parsed.page_count} pages of {parsed.page_size} bytes, "
                f"but this sink holds {memory.page_count} pages of {memory.page_size} bytes"
            )
            raise DriverError(msg)
        self._device_state = parsed

    async def activate(self) -> VM:
        """Resume the VM here with its workload continuing from the source's state."""
        memory = self._check_open()
        state = self._device_state
        if state is None:
            msg = "activate() needs the device state: call set_device_state() first"
            raise InvalidStateError(msg)
        workload = Workload.from_state(memory, state.workload, state.workload_state)
        record = self._record
        extra = dict(record.spec.extra)
        extra["workload"] = json.loads(state.workload.model_dump_json())
        record.spec = record.spec.model_copy(
            update={"vcpus": state.vcpus, "tags": dict(state.tags), "extra": extra}
        )
        record.workload = workload
        self._finished = "activated"
        vm = await self._driver._end_migration(record, keep=True, reason="migrated in")
        if vm is None:  # pragma: no cover - keep=True always returns the VM
            msg = f"VM {record.id} vanished while being activated"
            raise DriverError(msg)
        return vm

    async def abort(self) -> None:
        """Discard everything received; the VM disappears from this host."""
        if self._finished == "aborted":
            return
        self._check_open()
        self._finished = "aborted"
        await self._driver._end_migration(
            self._record, keep=False, reason="incoming migration aborted"
        )
