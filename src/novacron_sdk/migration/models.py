"""Settings, events and the report of a live migration."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class MigrationSettings(BaseModel):
    """How to migrate. Every field has a sensible default; all are in the ``migration`` config."""

    model_config = ConfigDict(extra="forbid")

    downtime_limit_ms: float = Field(default=300.0, gt=0, description="Max pause at switch-over.")
    precopy: bool = Field(
        default=True,
        description="Pre-copy while the VM runs. False = stop-and-copy: pause first, then send "
        "all memory (the naive baseline; downtime is the whole transfer).",
    )
    max_bandwidth_bps: float | None = Field(
        default=None, gt=0, description="Cap on wire bits per second; None = no cap."
    )
    auto_converge: bool = Field(default=True, description="Throttle the guest when rounds stall.")
    throttle_initial: float = Field(
        default=0.2, ge=0, lt=1, description="First auto-converge step: share of guest speed taken."
    )
    throttle_increment: float = Field(
        default=0.2, gt=0, lt=1, description="Added to the throttle at each further stall."
    )
    throttle_max: float = Field(
        default=0.99, gt=0, lt=1, description="Highest throttle; beyond it a stall aborts."
    )
    stall_rounds: int = Field(
        default=6, ge=1, description="Rounds without progress before throttling steps up/aborts."
    )
    max_rounds: int = Field(default=40, ge=1, description="Abort after this many pre-copy rounds.")
    timeout_s: float = Field(default=900.0, gt=0, description="Abort after this long.")
    on_stall: Literal["throttle", "abort", "force"] = Field(
        default="throttle",
        description="When rounds stop shrinking: throttle (auto-converge), abort, or "
        "force the switch-over regardless of the downtime limit.",
    )
    batch_pages: int = Field(
        default=256,
        ge=1,
        le=4096,
        description="Pages per encoded batch (one frame each); on a channel of several "
        "streams a send shorter than a batch per stream is cut into a batch per stream "
        "(at least 16 pages each).",
    )
    transport: str | None = Field(default=None, description="Transport name; None = default.")
    codec: str | None = Field(default=None, description="Codec name; None = default.")
    predictor: str | None = Field(default=None, description="Predictor name; None = default.")
    streams: int | None = Field(default=None, ge=1, le=64, description="None = transport decides.")
    verify: Literal["pages", "full"] = Field(
        default="pages",
        description="pages: compare per-page digests of every page sent; full: also hash "
        "all memory at both ends during the pause (longer downtime).",
    )
    multifd_channels: int = Field(default=0, ge=0, le=64, description="QEMU multifd (stream).")
    postcopy: bool = Field(default=False, description="QEMU postcopy (stream sources only).")


def migration_settings(values: dict[str, Any]) -> MigrationSettings:
    """Validate settings from user input; a bad value raises ConfigError naming the field."""
    from pydantic import ValidationError

    from novacron_sdk.errors import ConfigError

    try:
        return MigrationSettings.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        msg = f"invalid migration settings: {problems}"
        raise ConfigError(msg) from exc


MigrationEventKind = Literal[
    "planned",
    "round_started",
    "round_finished",
    "progress",
    "throttled",
    "switchover",
    "verified",
    "completed",
    "failed",
    "rolled_back",
]
"""What a MigrationEvent reports, in the order a migration produces them."""


class MigrationPhase(StrEnum):
    """Where a migration is."""

    PLANNING = "planning"
    PRECOPY = "precopy"
    SWITCHOVER = "switchover"
    VERIFYING = "verifying"
    COMPLETED = "completed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    CANCELLED = "cancelled"


class MigrationEvent(BaseModel):
    """Broadcast through ``novacron_migration_event`` as a migration progresses."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    migration_id: str
    vm: str
    kind: MigrationEventKind
    phase: MigrationPhase
    round: int = 0
    pages_total: int = 0
    pages_sent: int = 0
    pages_remaining: int = 0
    bytes_on_wire: int = 0
    message: str = ""
    data: dict[str, Any] = Field(default_factory=dict)


class RoundReport(BaseModel):
    """One pre-copy round."""

    model_config = ConfigDict(extra="forbid")

    round: int
    pages: int
    wire_bytes: int
    seconds: float
    throttle: float


class SwitchoverReport(BaseModel):
    """Where the downtime went: milliseconds from the pause, on the source's clock."""

    model_config = ConfigDict(extra="forbid")

    pages: int = Field(description="Dirty pages sent while the VM was paused.")
    wire_bytes: int = Field(description="Their encoded bytes.")
    sent_ms: float = Field(
        description="Until the last pages and the device state were handed to the transport."
    )
    verified_ms: float = Field(
        description="Until the destination's verification result arrived: the pages' transfer, "
        "its check and one round trip."
    )
    activated_ms: float = Field(description="Until the VM ran at the destination (= downtime).")


class MigrationReport(BaseModel):
    """What happened, with the figures a user needs to judge the migration."""

    model_config = ConfigDict(extra="forbid")

    migration_id: str
    vm: str
    source: str
    destination: str
    outcome: MigrationPhase
    error: str | None = None
    transport: str
    codec: str
    predictor: str
    streams: int = 1
    memory_bytes: int
    page_size: int
    rounds: list[RoundReport] = Field(default_factory=list)
    total_s: float = 0.0
    downtime_ms: float = 0.0
    downtime_limit_ms: float
    pages_sent: int = 0
    bytes_on_wire: int = 0
    wire_ratio: float = Field(default=0.0, description="bytes_on_wire / memory_bytes.")
    max_throttle: float = 0.0
    predicted_bps: float | None = None
    measured_bps: float | None = None
    link_bps: float | None = Field(
        default=None,
        description=(
            "The link's rate as measured from send backpressure (bits/s, the last second in "
            "which sends waited for the link; the codec's bandwidth hint from then on), or "
            "None when sends never waited for it (the CPU set the pace)."
        ),
    )
    rtt_ms: float | None = Field(
        default=None,
        description="Round trip to the destination, measured at the handshake; the switch-over "
        "rule counts one (the hand-over's verification) in the downtime.",
    )
    switchover: SwitchoverReport | None = None
    codec_stats: dict[str, int] = Field(
        default_factory=dict,
        description="The encoder's counts by kind (its ``CodecStats.by_kind``: pages per "
        "operation, batches per method for DWCP's chain), at the end of the migration.",
    )
    codec_seconds: dict[str, float] = Field(
        default_factory=dict,
        description="Where the encoder's time went, by stage (its ``CodecStats.seconds``; "
        "empty for codecs that do not measure it), at the end of the migration.",
    )
    verification: dict[str, Any] = Field(default_factory=dict)
