"""The ``sim`` hypervisor driver: a simulator whose VMs have real memory bytes and busy workloads.

It exists for demos, docs and tests (like libvirt's ``test:///`` driver) and labels itself so
everywhere; it never runs guest code. See docs/sim.md.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from novacron_sdk.builtin.sim import catalogue
from novacron_sdk.builtin.sim.catalogue import build_memory, memory_source, resolve_spec
from novacron_sdk.builtin.sim.memory import GuestMemory
from novacron_sdk.builtin.sim.migration import SimMigrationSink, SimMigrationSource
from novacron_sdk.builtin.sim.store import Inventory, SimVMRecord, parse_extra
from novacron_sdk.builtin.sim.workloads import Workload, WorkloadSpec
from novacron_sdk.config.checks import unknown_key_problem
from novacron_sdk.errors import DriverError, InvalidStateError, NotFoundError
from novacron_sdk.hypervisors.interface import (
    HypervisorDriver,
    MigrationSink,
    MigrationSource,
    MigrationSourceInfo,
)
from novacron_sdk.models import (
    VM,
    DriverFeature,
    Host,
    Image,
    Location,
    Page,
    Size,
    VMEvent,
    VMSpec,
    VMState,
)

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
EventSink = Callable[[VMEvent], None]


class SimDriver(HypervisorDriver):
    """A SIMULATED hypervisor for demos, docs and tests: VMs are real memory plus a workload.

    Settings: ``host_name`` (default ``sim-<hostname>``), ``vcpus`` (64) and ``memory_mib``
    (262144) of capacity, ``state_path`` (JSON file shared by processes; memory is not
    persisted), ``image_dir`` (``*.img``/``*.raw`` memory images offered as images).
    """

    name: ClassVar[str] = "sim"
    description: ClassVar[str] = (
        "Simulated hypervisor (not a real one): VMs with real memory bytes and synthetic "
        "workloads, for demos, docs and tests"
    )
    features: ClassVar[frozenset[DriverFeature]] = frozenset(
        {
            DriverFeature.CREATE,
            DriverFeature.START_STOP,
            DriverFeature.REBOOT,
            DriverFeature.DESTROY,
            DriverFeature.PAUSE,
            DriverFeature.IMAGES,
            DriverFeature.SIZES,
            DriverFeature.LOCATIONS,
            DriverFeature.HOSTS,
            DriverFeature.LIVE_MIGRATION_SOURCE,
            DriverFeature.LIVE_MIGRATION_SINK,
            DriverFeature.MEMORY_IMAGE,
            DriverFeature.THROTTLE,
            DriverFeature.EVENTS,
        }
    )

    SETTINGS: ClassVar[tuple[str, ...]] = (
        "host_name", "vcpus", "memory_mib", "image_dir", "state_path",
    )  # fmt: skip
    """Every setting the driver reads (``drivers.settings.sim``)."""

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        problem = unknown_key_problem(self.settings, self.SETTINGS, "drivers.settings.sim.")
        if problem is not None:
            raise DriverError(f"invalid sim driver settings: {problem}")
        try:
            self.host_name = str(self.settings.get("host_name") or f"sim-{socket.gethostname()}")
            self.capacity_vcpus = int(self.settings.get("vcpus", 64))
            self.capacity_memory_mib = int(self.settings.get("memory_mib", 262144))
        except (TypeError, ValueError) as exc:
            msg = f"invalid sim driver settings: vcpus and memory_mib must be integers ({exc})"
            raise DriverError(msg) from exc
        image_dir = self.settings.get("image_dir")
        self.image_dir = Path(image_dir) if image_dir else None
        self._inventory = Inventory(
            self.host_name,
            self.settings.get("state_path"),
            on_changed=self._apply_state,
            on_removed=self._free,
        )
        self._vms = self._inventory.records
        self._event_sink: EventSink | None = None

    # -- events ----------------------------------------------------------------------------
    def set_event_sink(self, callback: EventSink | None) -> None:
        """Call ``callback`` with a VMEvent on every state change (None to stop)."""
        self._event_sink = callback

    def _emit(self, record: SimVMRecord, reason: str) -> None:
        sink = self._event_sink
        if sink is None:
            return
        event = VMEvent(
            vm_id=record.id,
            driver=self.name,
            state=record.state,
            reason=reason,
            timestamp=datetime.now(UTC),
        )
        try:
            sink(event)
        except Exception:
            # A broken listener must not break the VM operation that triggered it.
            logger.exception("sim event sink failed on %s", event)

    def _set_state(self, record: SimVMRecord, state: VMState, reason: str) -> None:
        if record.state != state:
            record.state = state
            self._emit(record, reason)
        self._apply_state(record)

    # -- records ---------------------------------------------------------------------------
    def _to_vm(self, record: SimVMRecord) -> VM:
        spec = record.spec
        extra: dict[str, Any] = {"simulated": True}
        workload = record.workload
        if workload is not None:
            extra["workload"] = workload.spec.pattern
            extra["pages_written"] = workload.pages_written
        return VM(
            id=record.id,
            name=spec.name,
            state=record.state,
            driver=self.name,
            vcpus=spec.vcpus,
            memory_mib=spec.memory_mib,
            image=spec.image,
            size=spec.size,
            location=self.host_name,
            host=self.host_name,
            created_at=record.created_at,
            tags=dict(spec.tags),
            extra=extra,
        )

    # -- memory and workload ---------------------------------------------------------------
    def _apply_state(self, record: SimVMRecord) -> None:
        """Make the local workload match the record's state (if memory lives here)."""
        workload = record.workload
        if workload is None or record.migration is not None:
            return
        if record.state == VMState.RUNNING:
            workload.resume()
            workload.start()
        elif record.state == VMState.PAUSED:
            workload.pause()
        elif record.state == VMState.STOPPED:
            workload.stop()

    @staticmethod
    def _detach(record: SimVMRecord) -> GuestMemory | None:
        """Stop the workload and take the memory off the record (the caller closes it)."""
        if record.workload is not None:
            record.workload.stop()
        record.workload = None
        memory, record.memory = record.memory, None
        return memory

    def _free(self, record: SimVMRecord) -> None:
        memory = self._detach(record)
        if memory is not None:
            memory.close()

    @staticmethod
    async def _close_off_loop(memory: GuestMemory | None) -> None:
        # Unmapping gigabytes takes long enough to stall the event loop; do it in a thread.
        if memory is not None:
            await asyncio.to_thread(memory.close)

    async def _materialize(self, record: SimVMRecord) -> GuestMemory:
        """The record's memory, built (off the event loop) on first use in this process."""
        async with record.building:
            if record.memory is None:
                memory = await asyncio.to_thread(build_memory, record.spec, self.image_dir)
                try:
                    spec = parse_extra(record.spec.extra).workload
                    record.workload = Workload(memory, spec)
                except BaseException:
                    memory.close()
                    raise
                record.memory = memory
                self._apply_state(record)
            return record.memory

    # -- VMs -------------------------------------------------------------------------------
    async def _list_vms_page(self, token: str | None, page_size: int) -> Page[VM]:
        if page_size < 1:
            msg = f"page_size must be at least 1, got {page_size}"
            raise DriverError(msg, code="InvalidParameter")
        if token is not None and not token.isdigit():
            msg = f"invalid page token {token!r}: use the next_token of the previous page"
            raise DriverError(msg, code="InvalidParameter")
        offset = int(token or 0)
        with self._inventory.transaction(write=False):
            records = self._inventory.ordered()
        items = tuple(self._to_vm(record) for record in records[offset : offset + page_size])
        more = offset + page_size < len(records)
        return Page[VM](items=items, next_token=str(offset + page_size) if more else None)

    async def get_vm(self, vm_id: str) -> VM:
        """The VM with id or name ``vm_id``."""
        with self._inventory.transaction(write=False):
            return self._to_vm(self._inventory.find(vm_id))

    async def create_vm(self, spec: VMSpec) -> VM:
        """Create a VM: check capacity, allocate and fill its memory, start its workload."""
        self.require(DriverFeature.CREATE)
        spec = resolve_spec(spec, self.host_name)
        memory_source(spec, parse_extra(spec.extra), self.image_dir)
        record = SimVMRecord(
            id=f"sim-{secrets.token_hex(4)}",
            spec=spec,
            state=VMState.PENDING,
            created_at=datetime.now(UTC),
        )
        with self._inventory.transaction(write=True):
            self._inventory.check_room(spec, self.capacity_vcpus, self.capacity_memory_mib)
            self._vms[record.id] = record
        self._emit(record, "created")
        try:
            await self._materialize(record)
        except BaseException as exc:
            with self._inventory.transaction(write=True):
                self._vms.pop(record.id, None)
            self._free(record)
            record.state = VMState.TERMINATED
            self._emit(record, f"creation failed: {exc}")
            raise
        with self._inventory.transaction(write=True):
            if self._vms.get(record.id) is not record:
                self._free(record)
                msg = f"VM {record.id} was destroyed by another process while being created"
                raise NotFoundError(msg)
            self._set_state(record, VMState.RUNNING, "started")
            return self._to_vm(record)

    def _transition(
        self, vm_id: str, allowed: set[VMState], target: VMState, action: str, hint: str
    ) -> VM:
        with self._inventory.transaction(write=True):
            record = self._inventory.find(vm_id)
            if record.state not in allowed:
                names = " or ".join(sorted(s.value for s in allowed))
                msg = (
                    f"cannot {action} VM {record.spec.name!r} ({record.id}): it is "
                    f"{record.state.value}, and {action} needs it {names}; {hint}"
                )
                raise InvalidStateError(msg)
            self._set_state(record, target, action)
            return self._to_vm(record)

    async def start(self, vm_id: str) -> VM:
        """Start a stopped VM; its workload continues from where it stopped."""
        self.require(DriverFeature.START_STOP)
        return self._transition(vm_id, {VMState.STOPPED}, VMState.RUNNING, "start", "stop it first")

    async def stop(self, vm_id: str) -> VM:
        """Stop a running or paused VM; its memory is kept."""
        self.require(DriverFeature.START_STOP)
        return self._transition(
            vm_id,
            {VMState.RUNNING, VMState.PAUSED},
            VMState.STOPPED,
            "stop",
            "start it first, or wait for its migration to end",
        )

    async def reboot(self, vm_id: str) -> VM:
        """Reboot a running VM (memory is kept, as on a warm reset)."""
        self.require(DriverFeature.REBOOT)
        self._transition(
            vm_id, {VMState.RUNNING}, VMState.REBOOTING, "reboot", "start or resume it first"
        )
        return self._transition(
            vm_id, {VMState.REBOOTING}, VMState.RUNNING, "reboot", "it changed meanwhile"
        )

    async def pause(self, vm_id: str) -> VM:
        """Pause a running VM: its workload writes nothing until resumed."""
        self.require(DriverFeature.PAUSE)
        return self._transition(
            vm_id, {VMState.RUNNING}, VMState.PAUSED, "pause", "start or resume it first"
        )

    async def resume(self, vm_id: str) -> VM:
        """Resume a paused VM."""
        self.require(DriverFeature.PAUSE)
        return self._transition(
            vm_id, {VMState.PAUSED}, VMState.RUNNING, "resume", "pause it first"
        )

    async def destroy(self, vm_id: str) -> None:
        """Destroy a VM and free its memory."""
        self.require(DriverFeature.DESTROY)
        with self._inventory.transaction(write=True):
            record = self._inventory.find(vm_id)
            # The state, read from the shared file under its lock, also covers a migration
            # that another process runs (``record.migration`` exists only in that process).
            if record.migration is not None or record.state is VMState.MIGRATING:
                msg = (
                    f"cannot destroy VM {record.spec.name!r} ({record.id}) while it migrates: "
                    "let the migration finish or cancel it first"
                )
                raise InvalidStateError(msg)
            del self._vms[record.id]
            memory = self._detach(record)
            record.state = VMState.TERMINATED
        await self._close_off_loop(memory)
        self._emit(record, "destroyed")

    # -- catalogue -------------------------------------------------------------------------
    async def list_images(self) -> list[Image]:
        """The built-in memory images plus ``*.img``/``*.raw`` files in ``image_dir``."""
        self.require(DriverFeature.IMAGES)
        return catalogue.list_images(self.name, self.image_dir)

    async def list_sizes(self) -> list[Size]:
        """A small catalogue from sim.tiny (64 MiB) to sim.xlarge (16 GiB)."""
        self.require(DriverFeature.SIZES)
        return catalogue.list_sizes(self.name)

    async def list_locations(self) -> list[Location]:
        """One location: this simulated host."""
        self.require(DriverFeature.LOCATIONS)
        return [
            Location(
                id=self.host_name, name=self.host_name, driver=self.name, extra={"simulated": True}
            )
        ]

    async def list_hosts(self) -> list[Host]:
        """This simulated host with its capacity and what is used."""
        self.require(DriverFeature.HOSTS)
        with self._inventory.transaction(write=False):
            used_vcpus, used_memory = self._inventory.usage()
            count = len(self._vms)
        return [
            Host(
                id=self.host_name,
                name=self.host_name,
                driver=self.name,
                vcpus=self.capacity_vcpus,
                memory_mib=self.capacity_memory_mib,
                labels={"simulated": "true"},
                extra={"vms": count, "used_vcpus": used_vcpus, "used_memory_mib": used_memory},
            )
        ]

    # -- migration ends --------------------------------------------------------------------
    async def open_migration_source(self, vm_id: str) -> MigrationSource:
        """Start migrating a running VM away; it keeps running, listed as migrating."""
        self.require(DriverFeature.LIVE_MIGRATION_SOURCE)
        with self._inventory.transaction(write=False):
            record = self._inventory.find(vm_id)
        await self._materialize(record)
        with self._inventory.transaction(write=True):
            record = self._inventory.find(record.id)
            if record.state != VMState.RUNNING or record.migration is not None:
                msg = (
                    f"cannot migrate VM {record.spec.name!r} ({record.id}): it is "
                    f"{record.state.value}; only a running VM can be migrated"
                )
                raise InvalidStateError(msg)
            source = SimMigrationSource(self, record)
            record.migration = source
            self._set_state(record, VMState.MIGRATING, "migration started")
        return source

    async def open_migration_sink(self, info: MigrationSourceInfo) -> MigrationSink:
        """Reserve capacity and memory for an incoming VM, listed as migrating until activated."""
        self.require(DriverFeature.LIVE_MIGRATION_SINK)
        if info.kind != "pages":
            msg = "the sim driver receives page-level migrations only (info.kind must be 'pages')"
            raise DriverError(msg, code="InvalidParameter")
        spec = info.spec.model_copy(update={"location": None}, deep=True)
        if info.page_count < 1 or info.page_count * info.page_size != spec.memory_mib * MIB:
            msg = (
                f"migration info is inconsistent: {info.page_count} pages of {info.page_size} "
                f"bytes do not make the spec's {spec.memory_mib} MiB"
            )
            raise DriverError(msg, code="InvalidParameter")
        parse_extra(spec.extra)
        record = SimVMRecord(
            id=f"sim-{secrets.token_hex(4)}",
            spec=spec,
            state=VMState.MIGRATING,
            created_at=datetime.now(UTC),
        )
        with self._inventory.transaction(write=True):
            self._inventory.check_room(spec, self.capacity_vcpus, self.capacity_memory_mib)
            record.memory = GuestMemory(info.page_count * info.page_size, info.page_size)
            sink = SimMigrationSink(self, record)
            record.migration = sink
            self._vms[record.id] = record
        self._emit(record, "incoming migration")
        return sink

    # -- callbacks from the migration ends -------------------------------------------------
    async def _end_migration(self, record: SimVMRecord, *, keep: bool, reason: str) -> VM | None:
        with self._inventory.transaction(write=True):
            record.migration = None
            if keep:
                self._vms[record.id] = record
                self._set_state(record, VMState.RUNNING, reason)
                return self._to_vm(record)
            self._vms.pop(record.id, None)
            memory = self._detach(record)
            record.state = VMState.TERMINATED
        await self._close_off_loop(memory)
        self._emit(record, reason)
        return None

    # -- extras ----------------------------------------------------------------------------
    async def ex_memory(self, vm_id: str) -> GuestMemory:
        """The VM's guest memory (built on first use in this process). For tests and tools."""
        with self._inventory.transaction(write=False):
            record = self._inventory.find(vm_id)
        return await self._materialize(record)

    async def ex_memory_digest(self, vm_id: str) -> str:
        """A hex digest of the VM's whole memory; pause the VM first for a stable value."""
        memory = await self.ex_memory(vm_id)
        return await asyncio.to_thread(memory.digest)

    async def ex_workload(self, vm_id: str) -> Workload:
        """The VM's workload object (pages written, throttle), for tests and tools."""
        with self._inventory.transaction(write=False):
            record = self._inventory.find(vm_id)
        await self._materialize(record)
        workload = record.workload
        if workload is None:  # pragma: no cover - _materialize sets it
            msg = f"VM {record.id} has no workload in this process"
            raise DriverError(msg)
        return workload

    async def ex_set_workload(self, vm_id: str, spec: WorkloadSpec | Mapping[str, Any]) -> VM:
        """Replace the VM's workload (a fresh one, from ``spec``)."""
        extra = parse_extra({"workload": dict(spec) if isinstance(spec, Mapping) else spec})
        with self._inventory.transaction(write=False):
            record = self._inventory.find(vm_id)
        memory = await self._materialize(record)
        with self._inventory.transaction(write=True):
            if record.migration is not None or record.state is VMState.MIGRATING:
                msg = f"cannot change the workload of VM {record.id} while it migrates"
                raise InvalidStateError(msg)
            workload = Workload(memory, extra.workload)
            if record.workload is not None:
                record.workload.stop()
            record.workload = workload
            new_extra = dict(record.spec.extra)
            new_extra["workload"] = extra.workload.model_dump(mode="json")
            record.spec = record.spec.model_copy(update={"extra": new_extra})
            self._apply_state(record)
            return self._to_vm(record)

    async def close(self) -> None:
        """Stop every workload thread and free memory held by this process. Safe twice."""
        for record in list(self._vms.values()):
            self._free(record)
        self._vms.clear()
