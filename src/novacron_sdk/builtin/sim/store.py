"""VM records of the sim driver, and the optional JSON state file that shares them across processes.

Only the records (spec, state, id) are stored: guest memory lives in the process that uses it
and is rebuilt from the spec elsewhere. Writers hold an ``fcntl`` lock on a side file and
replace the state file atomically, so a reader never sees half a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from novacron_sdk.builtin.sim.memory import GuestMemory
from novacron_sdk.builtin.sim.workloads import Workload, WorkloadSpec
from novacron_sdk.errors import DriverError, NotFoundError, QuotaExceededError
from novacron_sdk.models import VMSpec, VMState

_FORMAT = "novacron-sim-state/1"


class SimExtra(BaseModel):
    """What ``VMSpec.extra`` may hold for the sim driver."""

    model_config = ConfigDict(extra="forbid")

    workload: WorkloadSpec = Field(default_factory=WorkloadSpec)
    fill: Literal["zero", "mixed"] = "mixed"
    seed: int = Field(default=0, ge=0, description="Seed of the 'mixed' memory fill.")
    memory_image: str | None = Field(default=None, description="Raw memory image file.")


def parse_extra(extra: dict[str, Any]) -> SimExtra:
    """Validate ``VMSpec.extra``; a bad value becomes a DriverError naming the field path."""
    try:
        return SimExtra.model_validate(extra)
    except ValidationError as exc:
        problems = "; ".join(
            f"extra.{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        msg = f"invalid sim VM settings: {problems}. See docs/sim.md for the allowed values."
        raise DriverError(msg, code="InvalidParameter") from exc


@dataclass(eq=False)
class SimVMRecord:
    """One VM as the driver keeps it. ``memory`` is None until this process first needs it."""

    id: str
    spec: VMSpec
    state: VMState
    created_at: datetime
    memory: GuestMemory | None = None
    workload: Workload | None = None
    migration: object | None = None
    building: asyncio.Lock = field(default_factory=asyncio.Lock)

    def to_json(self) -> dict[str, Any]:
        """The persisted part of the record."""
        return {
            "id": self.id,
            "spec": self.spec.model_dump(mode="json"),
            "state": self.state.value,
            "created_at": self.created_at.isoformat(),
        }


class _StoredVM(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    spec: VMSpec
    state: VMState
    created_at: datetime


class _StoredFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: str = _FORMAT
    vms: list[_StoredVM] = Field(default_factory=list)


def record_from_json(data: _StoredVM) -> SimVMRecord:
    """A record (without memory) from its stored form."""
    return SimVMRecord(id=data.id, spec=data.spec, state=data.state, created_at=data.created_at)


class StateFile:
    """The JSON file named by the ``state_path`` setting."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the exclusive cross-process lock for a read-modify-write."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = self._lock_path.open("a")
        except OSError as exc:
            msg = f"cannot use sim state file {str(self.path)!r}: {exc.strerror}"
            raise DriverError(msg) from exc
        with handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def read(self) -> list[_StoredVM]:
        """The stored VMs (none if the file does not exist yet). Call while locked."""
        try:
            text = self.path.read_bytes()  # bad UTF-8 is then a validation error like others
        except FileNotFoundError:
            return []
        except OSError as exc:
            msg = f"cannot read sim state file {str(self.path)!r}: {exc.strerror}"
            raise DriverError(msg) from exc
        try:
            stored = _StoredFile.model_validate_json(text)
        except ValidationError as exc:
            msg = (
                f"sim state file {str(self.path)!r} is corrupt ({exc.error_count()} problems, "
                f"first: {exc.errors()[0]['msg']}); move it away to start empty"
            )
            raise DriverError(msg) from exc
        if stored.format != _FORMAT:
            msg = (
                f"sim state file {str(self.path)!r} has format {stored.format!r}; this release "
                f"reads {_FORMAT!r}: use the release that wrote it, or move the file away"
            )
            raise DriverError(msg)
        return stored.vms

    def write(self, records: list[SimVMRecord]) -> None:
        """Replace the file atomically with ``records``. Call while locked."""
        payload = json.dumps(
            {"format": _FORMAT, "vms": [record.to_json() for record in records]}, indent=1
        )
        fd, tmp_name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            Path(tmp_name).replace(self.path)
        except OSError as exc:
            Path(tmp_name).unlink(missing_ok=True)
            msg = f"cannot write sim state file {str(self.path)!r}: {exc.strerror}"
            raise DriverError(msg) from exc


class Inventory:
    """The VM records of one sim host, kept in step with the state file when there is one.

    ``on_changed`` is called for a record another process changed, ``on_removed`` for one
    another process destroyed, so the owner can adjust or free its local memory and workload.
    """

    def __init__(
        self,
        host_name: str,
        state_path: str | Path | None,
        *,
        on_changed: Callable[[SimVMRecord], None],
        on_removed: Callable[[SimVMRecord], None],
    ) -> None:
        self.host_name = host_name
        self.records: dict[str, SimVMRecord] = {}
        self._file = StateFile(state_path) if state_path else None
        self._on_changed = on_changed
        self._on_removed = on_removed

    @contextlib.contextmanager
    def transaction(self, *, write: bool) -> Iterator[None]:
        """A read(-modify-write) of the records; with a state file, locked across processes."""
        if self._file is None:
            yield
            return
        with self._file.locked():
            self._merge(self._file.read())
            yield
            if write:
                self._file.write(self.ordered())

    def _merge(self, stored: list[_StoredVM]) -> None:
        seen = set()
        for data in stored:
            seen.add(data.id)
            record = self.records.get(data.id)
            if record is None:
                self.records[data.id] = record_from_json(data)
            elif record.state != data.state or record.spec != data.spec:
                record.spec, record.state = data.spec, data.state
                self._on_changed(record)
        for vm_id in [vm_id for vm_id in self.records if vm_id not in seen]:
            self._on_removed(self.records.pop(vm_id))

    def ordered(self) -> list[SimVMRecord]:
        """Records in creation order (the listing order)."""
        return sorted(self.records.values(), key=lambda r: (r.created_at, r.id))

    def find(self, vm_id: str) -> SimVMRecord:
        """The record with id or name ``vm_id``."""
        record = self.records.get(vm_id)
        if record is None:
            named = [r for r in self.records.values() if r.spec.name == vm_id]
            if not named:
                msg = f"no VM {vm_id!r} on sim host {self.host_name!r}; see `novacron vm list`"
                raise NotFoundError(msg)
            record = named[0]
        return record

    def usage(self) -> tuple[int, int]:
        """(vCPUs, MiB) taken by every VM on the host, stopped and incoming ones included."""
        vcpus = sum(r.spec.vcpus for r in self.records.values())
        memory = sum(r.spec.memory_mib for r in self.records.values())
        return vcpus, memory

    def check_room(self, spec: VMSpec, capacity_vcpus: int, capacity_mib: int) -> None:
        """Raise unless ``spec`` fits next to the other VMs and its name is free."""
        if any(r.spec.name == spec.name for r in self.records.values()):
            msg = f"a VM named {spec.name!r} already exists on sim host {self.host_name!r}"
            raise DriverError(msg, code="DuplicateName")
        used_vcpus, used_memory = self.usage()
        if used_memory + spec.memory_mib > capacity_mib:
            msg = (
                f"sim host {self.host_name!r} has {capacity_mib - used_memory} MiB of memory "
                f"free, the VM needs {spec.memory_mib} MiB: destroy VMs or raise the driver's "
                "memory_mib setting"
            )
            raise QuotaExceededError(msg)
        if used_vcpus + spec.vcpus > capacity_vcpus:
            msg = (
                f"sim host {self.host_name!r} has {capacity_vcpus - used_vcpus} vCPUs free, "
                f"the VM needs {spec.vcpus}: destroy VMs or raise the driver's vcpus setting"
            )
            raise QuotaExceededError(msg)
