"""Settings of the multi-stream transport, and mode detection (datacenter or internet).

The mode picks the defaults that a user did not set: congestion control, the number of
streams to start with and the flow-control window. ``mode="auto"`` decides from the RTT
measured during the handshake and the loss rate the kernel reports later.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from novacron_sdk.config.checks import validation_problems
from novacron_sdk.errors import ConfigError
from novacron_sdk.transport.interface import DEFAULT_MAX_FRAME

Mode = Literal["datacenter", "internet"]

STREAM_LIMIT = 256
"""Most streams one channel may be set to use (the transport's ``max_streams``)."""

MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    # Low RTT: one stream already fills the link and every extra stream costs CPU.
    "datacenter": {"congestion": "cubic", "initial_streams": 1},
    # Long fat, lossy paths: BBR ignores random loss, and a few streams hedge against
    # per-flow policing and a stream stuck in recovery.
    "internet": {"congestion": "bbr", "initial_streams": 4},
}


class MultiStreamSettings(BaseModel):
    """Settings of the ``dwcp`` transport (transport settings, overridden by endpoint options)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["auto", "datacenter", "internet"] = Field(
        default="auto", description="auto: detect from measured RTT and loss."
    )
    min_streams: int = Field(default=1, ge=1, le=STREAM_LIMIT)
    max_streams: int = Field(default=64, ge=1, le=STREAM_LIMIT)
    initial_streams: int | None = Field(default=None, ge=1, description="None: mode default.")
    adapt: bool = Field(default=True, description="Grow/shrink the stream count by goodput.")
    adapt_interval_s: float | None = Field(
        default=None, gt=0, description="None: 10 RTTs, clamped to 0.5..2 s."
    )
    congestion: str | None = Field(
        default=None, description="TCP_CONGESTION per socket, e.g. bbr, cubic; None: mode default."
    )
    socket_buffer_bytes: int | None = Field(
        default=8 << 20, ge=4096, description="SO_SNDBUF/SO_RCVBUF; None keeps autotuning."
    )
    notsent_lowat_bytes: int | None = Field(
        default=512 * 1024, ge=16384, description="TCP_NOTSENT_LOWAT; None: kernel default."
    )
    window_bytes: int = Field(
        default=64 << 20, ge=65536, description="Unacknowledged payload bytes per direction."
    )
    send_queue_bytes: int = Field(
        default=4 << 20, ge=65536, description="Frames waiting for a stream; send() waits above."
    )
    window_frames: int = Field(default=65536, ge=16, le=1 << 24)
    max_frame_bytes: int = Field(default=DEFAULT_MAX_FRAME, ge=1024, le=(1 << 32) - 1)
    resume_window_s: float = Field(default=30.0, ge=0, description="0 disables resumption.")
    connect_timeout_s: float = Field(default=10.0, gt=0)
    close_linger_s: float = Field(default=5.0, ge=0)
    stall_min_s: float = Field(
        default=0.2, gt=0, description="No ack progress this long (or 2 RTT): rescue frames."
    )
    ack_delay_s: float = Field(default=0.002, ge=0)
    skip_crc_when_sealed: bool = Field(
        default=True,
        description="On a sealed channel whose peer takes them, send DATA frames whose CRC "
        "covers the header only (the AEAD tag checks the payload).",
    )
    datacenter_rtt_s: float = Field(default=0.002, gt=0, description="Below: datacenter.")
    datacenter_loss: float = Field(default=0.001, ge=0, le=1, description="Below: datacenter.")

    @model_validator(mode="after")
    def _check_bounds(self) -> MultiStreamSettings:
        if self.min_streams > self.max_streams:
            msg = f"min_streams ({self.min_streams}) is above max_streams ({self.max_streams})"
            raise ValueError(msg)
        return self

    @classmethod
    def from_sources(
        cls, settings: Mapping[str, Any], options: Mapping[str, str] | None = None
    ) -> MultiStreamSettings:
        """Build from transport settings, endpoint options winning; ConfigError when invalid.

        The core's generic ``streams`` endpoint option (a migration's ``streams`` setting, or
        the planner's ``novacron_choose_stream_count`` answer: how many streams a channel
        starts with) is this transport's ``initial_streams``; adaptation still applies.
        """
        merged = {**settings, **(options or {})}
        if "streams" in merged:
            merged["initial_streams"] = merged.pop("streams")
        try:
            return cls.model_validate(merged)
        except ValidationError as exc:
            problems = validation_problems(exc, cls)
            msg = f"invalid dwcp transport settings: {problems} (docs/dwcp-transport.md#settings)"
            raise ConfigError(msg) from exc

    def detect_mode(self, rtt_s: float | None, loss: float | None) -> Mode:
        """The forced mode, or the one that fits the measured RTT and loss rate."""
        if self.mode != "auto":
            return self.mode
        if rtt_s is None:
            return "datacenter"
        lossy = loss is not None and loss >= self.datacenter_loss
        return "internet" if rtt_s >= self.datacenter_rtt_s or lossy else "datacenter"

    def resolved(self, mode: Mode) -> ResolvedSettings:
        """The effective values for ``mode`` (explicit settings win over mode defaults)."""
        defaults = MODE_DEFAULTS[mode]
        initial = self.initial_streams or int(defaults["initial_streams"])
        return ResolvedSettings(
            mode=mode,
            congestion=self.congestion or str(defaults["congestion"]),
            initial_streams=max(self.min_streams, min(self.max_streams, initial)),
            window_bytes=self.window_bytes,
        )


class ResolvedSettings(BaseModel):
    """Mode-dependent values after detection."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode
    congestion: str
    initial_streams: int
    window_bytes: int
