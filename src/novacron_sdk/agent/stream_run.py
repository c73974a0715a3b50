"""The source's side of a stream migration as the agent reports it: events and a report.

:class:`StreamMigrationRun` stands where the page-level :class:`MigrationEngine` stands for
an outgoing migration (``phase``, ``report``, ``cancel``), so the control API, the event
long-poll and ``migrate_via_agents`` treat both alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from novacron_sdk.compute.interface import (
    StreamMigrationOutcome,
    StreamMigrationProgress,
    StreamMigrationTicket,
)
from novacron_sdk.errors import MigrationError, NovaCronError
from novacron_sdk.migration.models import (
    MigrationEvent,
    MigrationEventKind,
    MigrationPhase,
    MigrationReport,
    MigrationSettings,
)
from novacron_sdk.models import VMState

if TYPE_CHECKING:
    from novacron_sdk.compute.interface import ComputeDriver
    from novacron_sdk.plugin.manager import NovaCronPluginManager
    from novacron_sdk.transport.interface import Transport

log = logging.getLogger(__name__)

STREAM_CODEC = "qemu-stream"
"""The report's codec for a stream migration: the hypervisor's own stream, carried as is."""


class StreamMigrationRun:
    """Drives the source driver's stream migration and turns it into events and a report."""

    def __init__(
        self,
        *,
        plugins: NovaCronPluginManager,
        settings: MigrationSettings,
        transport_name: str,
        vm: str,
        source_name: str,
        destination_name: str,
        migration_id: str,
        on_event: Callable[[MigrationEvent], None],
        rollback_fence: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.plugins = plugins
        self.settings = settings
        self.transport_name = transport_name
        self.vm = vm
        self.source_name = source_name
        self.destination_name = destination_name
        self.migration_id = migration_id
        self._on_event = on_event
        # Cluster mode: after a failed job, the VM counts as running here (rolled back) only
        # once this host re-claimed its ownership record; the hypervisor may have switched
        # over meanwhile, and the claim also fences a destination whose claim is to come.
        self._rollback_fence = rollback_fence
        self.report: MigrationReport | None = None
        self._phase = MigrationPhase.PLANNING
        self._job: asyncio.Task[StreamMigrationOutcome] | None = None
        self._cancelled = False
        self._last = StreamMigrationProgress()

    @property
    def phase(self) -> MigrationPhase:
        """Where the migration is now."""
        return self._phase

    def cancel(self) -> None:
        """Abort the hypervisor's job; the VM stays at the source unless it switched over."""
        self._cancelled = True
        if self._job is not None:
            self._job.cancel()

    async def run(
        self,
        driver: ComputeDriver,
        vm_id: str,
        ticket: StreamMigrationTicket,
        transport: Transport,
    ) -> MigrationReport:
        """Migrate; returns the report, or raises MigrationError with the report filled in."""
        report = MigrationReport(
            migration_id=self.migration_id,
            vm=self.vm,
            source=self.source_name,
            destination=self.destination_name,
            outcome=MigrationPhase.PRECOPY,
            transport=self.transport_name,
            codec=STREAM_CODEC,
            predictor="none",  # the hypervisor paces its own stream
            streams=0,
            memory_bytes=0,
            page_size=4096,
            downtime_limit_ms=self.settings.downtime_limit_ms,
        )
        self.report = report
        self._phase = MigrationPhase.PRECOPY
        self._emit("planned", message=f"hypervisor stream via {report.transport}")
        started = time.monotonic()
        try:
            if self._cancelled:
                raise asyncio.CancelledError
            self._job = asyncio.create_task(
                driver.migrate_stream_out(
                    vm_id,
                    ticket,
                    transport=transport,
                    settings=self.settings,
                    on_progress=self._progress,
                )
            )
            outcome = await self._job
        except asyncio.CancelledError:
            if not self._cancelled:
                raise  # the agent itself is being stopped
            await self._failed(driver, vm_id, report, started, "cancelled by the user")
            msg = f"migration {self.migration_id} of {self.vm} was cancelled; it runs at the source"
            raise MigrationError(msg, report=report) from None
        except Exception as exc:
            await self._failed(driver, vm_id, report, started, str(exc))
            msg = f"migration {self.migration_id} of {self.vm} failed: {report.error}"
            raise MigrationError(msg, report=report) from exc
        self._fill(report, outcome)
        report.outcome = self._phase = MigrationPhase.COMPLETED
        self._emit("completed", message=f"downtime {report.downtime_ms:.0f} ms")
        return report

    def _fill(self, report: MigrationReport, outcome: StreamMigrationOutcome) -> None:
        report.total_s = outcome.total_s
        report.downtime_ms = outcome.downtime_ms or 0.0
        report.streams = outcome.connections
        report.memory_bytes = outcome.memory_total
        report.page_size = outcome.page_size
        report.pages_sent = outcome.pages_sent
        report.bytes_on_wire = outcome.bytes_on_wire
        report.wire_ratio = outcome.bytes_on_wire / max(1, outcome.memory_total)
        report.measured_bps = (
            8 * outcome.bytes_on_wire / outcome.total_s if outcome.total_s else None
        )
        report.verification = {"by": "hypervisor", "postcopy": outcome.postcopy_started}

    async def _failed(
        self,
        driver: ComputeDriver,
        vm_id: str,
        report: MigrationReport,
        started: float,
        error: str,
    ) -> None:
        report.total_s = time.monotonic() - started
        report.error = error
        report.bytes_on_wire = self._last.bytes_on_wire
        report.memory_bytes = self._last.memory_total
        # The hypervisor keeps the guest at the source on a failure before switch-over;
        # say "rolled back" only when it is seen there.
        with contextlib.suppress(Exception):
            here = await driver.get_vm(vm_id)
            if here.state in (VMState.RUNNING, VMState.PAUSED):
                lost = await self._reclaim()
                if lost is None:
                    report.outcome = self._phase = MigrationPhase.ROLLED_BACK
                else:
                    report.error = f"{error}; {lost}"
        if report.outcome is not MigrationPhase.ROLLED_BACK:
            report.outcome = self._phase = MigrationPhase.FAILED
        self._emit("failed", message=report.error)
        if report.outcome is MigrationPhase.ROLLED_BACK:
            self._emit("rolled_back", message="the VM runs at the source")

    async def _reclaim(self) -> str | None:
        """None when the VM seen here may count as running here; else why it may not."""
        if self._rollback_fence is None:
            return None
        try:
            if await self._rollback_fence():
                return None
        except NovaCronError as exc:
            log.warning("could not re-claim VM %s after its migration failed: %s", self.vm, exc)
        return (
            "another host may own the VM now (its ownership record could not be re-claimed), "
            "so it does not count as running here: check the ownership record "
            "(novacron status --cluster)"
        )

    def refused(self, reason: str) -> None:
        """The hypervisor completed, but the destination did not take the VM over."""
        if self.report is not None:
            self.report.outcome = MigrationPhase.FAILED
            self.report.error = reason
        self._phase = MigrationPhase.FAILED
        self._emit("failed", message=reason)

    def _progress(self, progress: StreamMigrationProgress) -> None:
        if progress.iteration > self._last.iteration > 0:
            self._emit("round_finished", progress=self._last)
        self._last = progress
        self._emit("progress", progress=progress)

    def _emit(
        self,
        kind: MigrationEventKind,
        *,
        message: str = "",
        progress: StreamMigrationProgress | None = None,
    ) -> None:
        last = progress or self._last
        size = max(1, last.page_size)
        event = MigrationEvent(
            migration_id=self.migration_id,
            vm=self.vm,
            kind=kind,
            phase=self._phase,
            round=last.iteration,
            pages_total=last.memory_total // size,
            pages_sent=last.memory_processed // size,
            pages_remaining=last.memory_remaining // size,
            bytes_on_wire=last.bytes_on_wire,
            message=message,
            data=dict(last.data) if progress is not None else {},
        )
        self.plugins.emit_migration_event(event)
        try:
            self._on_event(event)
        except Exception:
            log.exception("migration event callback failed")
