"""The hypervisor driver contract: compute, hosts, and the two ends of a live migration.

A *page-level* migration source exposes guest memory as fixed-size pages with dirty tracking;
the core migration engine then does pre-copy itself (encode, send, verify). Drivers whose
hypervisor produces its own migration stream (QEMU) expose a *stream* source instead, which
the engine carries over the transport unchanged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from novacron_sdk.compute.interface import ComputeDriver
from novacron_sdk.models import VM, DriverFeature, Host, VMSpec

PAGE_SIZE = 4096


class MigrationSourceInfo(BaseModel):
    """What the destination needs to prepare a sink before any page arrives."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["pages", "stream"] = "pages"
    spec: VMSpec
    page_size: int = Field(default=PAGE_SIZE, gt=0)
    page_count: int = Field(ge=0)


class MigrationSource(ABC):
    """The source end of a page-level live migration.

    The engine calls, in order: ``info``; ``start_tracking``; repeated ``collect_dirty`` and
    ``read_pages``; maybe ``set_throttle``; ``pause``; ``device_state``; then either
    ``release`` (after the destination resumed) or ``rollback`` (on any failure before
    switch-over: tracking stops, throttle is lifted and the VM runs on untouched).
    """

    @abstractmethod
    def info(self) -> MigrationSourceInfo:
        """The VM's spec and memory geometry."""

    @abstractmethod
    async def start_tracking(self) -> None:
        """Start dirty tracking; every page counts as dirty for the first round."""

    @abstractmethod
    async def collect_dirty(self) -> list[int]:
        """Indices of pages written since the previous call (sorted), and reset tracking."""

    @abstractmethod
    async def read_pages(self, indices: Sequence[int]) -> bytes:
        """The current content of ``indices``, concatenated (len = n * page_size)."""

    @abstractmethod
    async def set_throttle(self, fraction: float) -> None:
        """Slow the guest to ``1 - fraction`` of its speed (0.0 = no throttle, max 0.99)."""

    @abstractmethod
    async def pause(self) -> None:
        """Stop the guest: from now on no page changes."""

    @abstractmethod
    async def device_state(self) -> bytes:
        """Opaque CPU/device state, taken while paused."""

    @abstractmethod
    async def release(self) -> None:
        """The destination runs the VM now: destroy the source copy."""

    @abstractmethod
    async def rollback(self) -> None:
        """Abort: lift throttling, resume the guest if paused, stop tracking."""


class MigrationSink(ABC):
    """The destination end of a page-level live migration."""

    @abstractmethod
    async def write_pages(self, indices: Sequence[int], data: bytes) -> None:
        """Store page content (``data`` is ``len(indices) * page_size`` bytes)."""

    @abstractmethod
    async def page_digests(self, indices: Sequence[int]) -> list[bytes]:
        """Digests of ``indices`` as stored here (``migration.digests.page_digest``)."""

    @abstractmethod
    async def set_device_state(self, state: bytes) -> None:
        """Apply the device state taken at the source."""

    @abstractmethod
    async def activate(self) -> VM:
        """Resume the VM here. Called only after verification passed."""

    @abstractmethod
    async def abort(self) -> None:
        """Discard everything received; the VM never runs here."""


class HypervisorDriver(ComputeDriver):
    """A compute driver for hypervisor hosts that can be live-migration ends."""

    @abstractmethod
    async def list_hosts(self) -> list[Host]:
        """The hosts this driver manages (one for a single hypervisor connection)."""

    async def pause(self, vm_id: str) -> VM:
        """Pause a running VM. Requires ``DriverFeature.PAUSE``."""
        self.require(DriverFeature.PAUSE)
        raise NotImplementedError  # pragma: no cover - advertised drivers override

    async def resume(self, vm_id: str) -> VM:
        """Resume a paused VM. Requires ``DriverFeature.PAUSE``."""
        self.require(DriverFeature.PAUSE)
        raise NotImplementedError  # pragma: no cover - advertised drivers override

    async def open_migration_source(self, vm_id: str) -> MigrationSource:
        """Begin migrating ``vm_id`` away. Requires ``LIVE_MIGRATION_SOURCE``."""
        self.require(DriverFeature.LIVE_MIGRATION_SOURCE)
        raise NotImplementedError  # pragma: no cover - advertised drivers override

    async def open_migration_sink(self, info: MigrationSourceInfo) -> MigrationSink:
        """Prepare to receive a VM described by ``info``. Requires ``LIVE_MIGRATION_SINK``."""
        self.require(DriverFeature.LIVE_MIGRATION_SINK)
        raise NotImplementedError  # pragma: no cover - advertised drivers override
