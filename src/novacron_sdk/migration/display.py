"""Terminal rendering of a migration: a rich progress bar fed by events, and the report."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from novacron_sdk.migration.models import MigrationEvent, MigrationReport

MIB = 1024 * 1024


class ProgressDisplay:
    """A rich progress bar per migration; call it with each event. Use as a context manager."""

    def __init__(self, *, enabled: bool = True) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console(stderr=True, log_path=False)  # no "display.py:81" beside each line
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("pages  {task.fields[wire]}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=not enabled,
            transient=False,
        )
        self._enabled = enabled
        self._task: Any = None
        self._round_start_sent = 0

    def __enter__(self) -> ProgressDisplay:
        self._progress.start()
        self._task = self._progress.add_task("planning", total=None, wire="")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def __call__(self, event: MigrationEvent) -> None:
        wire = f"{event.bytes_on_wire / MIB:8.1f} MiB on the wire"
        if event.kind == "round_started":
            self._round_start_sent = event.pages_sent
            self._progress.update(
                self._task,
                description=f"round {event.round}",
                total=max(1, event.pages_remaining),
                completed=0,
                wire=wire,
            )
        elif event.kind == "progress":
            self._progress.update(
                self._task, completed=event.pages_sent - self._round_start_sent, wire=wire
            )
        elif event.kind == "round_finished":
            self._progress.update(self._task, completed=event.pages_remaining, wire=wire)
        elif event.kind == "switchover":
            self._round_start_sent = event.pages_sent
            self._progress.update(
                self._task,
                description="switch-over",
                total=max(1, event.pages_remaining),
                completed=0,
                wire=wire,
            )
        elif event.kind in ("throttled", "rolled_back", "failed", "verified") and self._enabled:
            self.console.log(f"{event.kind}: {event.message}")
        elif event.kind == "completed":
            self._progress.update(
                self._task,
                description="completed",
                completed=self._progress.tasks[0].total or 0,
                wire=wire,
            )


def report_rows(report: MigrationReport) -> list[tuple[str, str]]:
    """The report as (label, value) rows for a table."""
    rows = [
        ("outcome", report.outcome.value),
        ("vm", f"{report.vm}: {report.source} -> {report.destination}"),
        (
            "memory",
            f"{report.memory_bytes / MIB:.0f} MiB ({report.memory_bytes // report.page_size}"
            f" pages of {report.page_size} B)",
        ),
        (
            "transport / codec / predictor",
            f"{report.transport} ({report.streams} stream(s)) / {report.codec}"
            f" / {report.predictor}",
        ),
        ("total time", f"{report.total_s:.2f} s"),
        ("downtime", f"{report.downtime_ms:.1f} ms (limit {report.downtime_limit_ms:.0f} ms)"),
        *_switchover_rows(report),
        ("pre-copy rounds", str(len(report.rounds))),
        (
            "pages sent",
            f"{report.pages_sent} ({report.pages_sent * report.page_size / MIB:.0f} MiB"
            " before encoding)",
        ),
        (
            "bytes on the wire",
            f"{report.bytes_on_wire / MIB:.1f} MiB = {report.wire_ratio:.3f}x memory size",
        ),
        ("max guest throttle", f"{report.max_throttle:.0%}"),
    ]
    if report.measured_bps is not None:
        predicted = f"{report.predicted_bps / 1e6:.0f}" if report.predicted_bps else "n/a"
        rows.append(
            (
                "bandwidth predicted / measured",
                f"{predicted} / {report.measured_bps / 1e6:.0f} Mbit/s",
            )
        )
    if report.link_bps is not None:
        rows.append(("link (measured from backpressure)", f"{report.link_bps / 1e6:.1f} Mbit/s"))
    methods = sorted(
        ((k.removeprefix("batches:"), v) for k, v in report.codec_stats.items() if ":" in k),
        key=lambda item: -item[1],
    )
    if methods:
        rows.append(("codec methods (batches)", ", ".join(f"{m} {n}" for m, n in methods)))
    spent = dict(report.codec_seconds)
    if "encode" in spent:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in sorted(spent.items()) if k != "encode")
        detail = f" ({stages})" if stages else ""
        rows.append(("encoder time", f"{spent['encode']:.2f} s{detail}"))
    if report.error:
        rows.append(("error", report.error))
    return rows


def _switchover_rows(report: MigrationReport) -> list[tuple[str, str]]:
    """Where the downtime went, and the round trip the switch-over rule counted."""
    rows = []
    if report.rtt_ms is not None:
        rows.append(("round trip (handshake)", f"{report.rtt_ms:.1f} ms"))
    done = report.switchover
    if done is not None:
        rows.append(
            (
                "pause: sent / verified / running",
                f"{done.sent_ms:.0f} / {done.verified_ms:.0f} / {done.activated_ms:.0f} ms"
                f" ({done.pages} pages, {done.wire_bytes / MIB:.2f} MiB)",
            )
        )
    return rows


def print_report(report: MigrationReport) -> None:
    """Print the report as a table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"migration {report.migration_id}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for label, value in report_rows(report):
        table.add_row(label, value)
    Console().print(table)


def verification_line(report: MigrationReport) -> str:
    """One line saying what was verified, from the report's verification section."""
    v = report.verification
    if not v:
        return "verification: none recorded"
    return (
        f"verified: {v.get('pages_compared', '?')} pages, digests ({v.get('algorithm', '?')})"
        f" identical at source and destination ({v.get('mismatches', '?')} mismatches); "
        f"{v.get('sink_pages_checked', '?')} pages re-read from the destination VM's memory"
    )
