"""Prometheus metrics of one agent, in a registry of its own (several agents per process work)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from novacron_sdk.migration.models import MigrationReport


class AgentMetrics:
    """Counters and histograms exported at ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.migrations = Counter(
            "novacron_migrations",
            "Outgoing migrations by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.incoming = Counter(
            "novacron_incoming_migrations", "Incoming migrations prepared", registry=self.registry
        )
        self.wire_bytes = Counter(
            "novacron_migration_wire_bytes",
            "Bytes sent by completed migrations",
            registry=self.registry,
        )
        self.downtime = Histogram(
            "novacron_migration_downtime_seconds",
            "Switch-over downtime",
            buckets=(0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5),
            registry=self.registry,
        )
        self.duration = Histogram(
            "novacron_migration_duration_seconds",
            "Total migration time",
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )
        self.vms = Gauge("novacron_vms", "VMs on this host", registry=self.registry)
        self.requests = Counter(
            "novacron_api_requests",
            "Control API requests",
            ["method", "status"],
            registry=self.registry,
        )

    def migration_done(self, report: MigrationReport) -> None:
        """Record a completed migration."""
        self.migrations.labels(outcome="completed").inc()
        self.wire_bytes.inc(report.bytes_on_wire)
        self.downtime.observe(report.downtime_ms / 1000)
        self.duration.observe(report.total_s)

    def migration_failed(self) -> None:
        """Record a failed or rolled-back migration."""
        self.migrations.labels(outcome="failed").inc()

    def render(self) -> bytes:
        """The text exposition format."""
        return bytes(generate_latest(self.registry))
