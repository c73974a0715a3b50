"""The prediction contract: ``observe(samples)`` then ``predict(horizon)``.

Throughput is in bits per second. A prediction carries a mean and a lower bound with the
coverage the predictor claims for it (the share of intervals whose real mean is at or above
the bound).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field


class BandwidthSample(BaseModel):
    """Throughput measured over ``[t - duration_s, t]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    t: float = Field(description="End of the interval, seconds (monotonic or trace time).")
    bits_per_second: float = Field(ge=0)
    duration_s: float = Field(default=1.0, gt=0)


class BandwidthEstimate(BaseModel):
    """A prediction of the mean throughput over the next ``horizon_s`` seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    horizon_s: float = Field(gt=0)
    mean_bps: float = Field(ge=0)
    lower_bps: float = Field(ge=0)
    coverage: float = Field(ge=0, le=1, description="Claimed P(actual >= lower_bps).")
    predictor: str
    samples: int = Field(ge=0, description="How many samples the estimate rests on.")


class BandwidthPredictor(ABC):
    """Stateful predictor; one per link."""

    name: ClassVar[str] = ""

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self.settings: dict[str, Any] = dict(settings or {})

    @abstractmethod
    def observe(self, samples: Sequence[BandwidthSample]) -> None:
        """Add measurements, oldest first."""

    @abstractmethod
    def predict(self, horizon_s: float) -> BandwidthEstimate | None:
        """The estimate for the next ``horizon_s`` seconds; None before any sample."""
