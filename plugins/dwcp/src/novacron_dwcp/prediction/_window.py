"""Shared machinery of the DWCP predictors: the sample window and an online error quantile."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence

from novacron_sdk.errors import ConfigError
from novacron_sdk.prediction.interface import BandwidthSample

RATE_FLOOR_BPS = 1_000.0
"""Rates are floored at 1 kbit/s before ratios and logs, so an outage does not divide by zero."""


def harmonic_mean(values: Iterable[float]) -> float:
    """Harmonic mean of rates floored at :data:`RATE_FLOOR_BPS` (MPC's predictor)."""
    floored = [max(v, RATE_FLOOR_BPS) for v in values]
    return len(floored) / sum(1.0 / v for v in floored)


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (lower interpolation: never above an observed value)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.floor(q * (len(ordered) - 1))))]


def positive_setting(settings: dict[str, object], key: str, default: float) -> float:
    """A positive float setting, with a clear error for a wrong value."""
    value = settings.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        msg = f"predictor setting {key!r} must be a positive number, got {value!r}"
        raise ConfigError(msg)
    return float(value)


class SampleWindow:
    """The most recent samples of one link, oldest first."""

    def __init__(self, size: int) -> None:
        self.samples: deque[BandwidthSample] = deque(maxlen=size)
        self.count = 0

    def add(self, sample: BandwidthSample) -> None:
        """Append one sample; samples older than the last one are rejected."""
        if self.samples and sample.t < self.samples[-1].t:
            msg = (
                f"sample at t={sample.t} is older than the last one (t={self.samples[-1].t}); "
                "observe samples oldest first"
            )
            raise ConfigError(msg)
        self.samples.append(sample)
        self.count += 1

    def rates(self, last: int | None = None) -> list[float]:
        """The last ``last`` rates (all kept ones by default)."""
        rates = [s.bits_per_second for s in self.samples]
        return rates if last is None else rates[-last:]

    @property
    def step_s(self) -> float:
        """Duration of the last sample: the trace's sampling step."""
        return self.samples[-1].duration_s


class ErrorQuantile:
    """Calibrates a lower bound online from the ratios actual / one-step prediction.

    Each new sample is compared with the prediction made just before it; the bound is the mean
    times the ``1 - coverage`` quantile of the last ``window`` ratios. Averaging over longer
    horizons smooths the rate, so the one-step ratio makes the bound conservative for them.
    """

    def __init__(self, coverage: float = 0.9, window: int = 60, minimum: int = 10) -> None:
        self.coverage = coverage
        self.ratios: deque[float] = deque(maxlen=window)
        self.minimum = minimum
        self.pending: float | None = None

    def record(self, actual_bps: float) -> None:
        """Score the pending one-step prediction against the sample that just arrived."""
        if self.pending is not None:
            self.ratios.append(max(actual_bps, 0.0) / max(self.pending, RATE_FLOOR_BPS))

    def expect(self, predicted_bps: float) -> None:
        """Remember the one-step prediction the next sample will be compared with."""
        self.pending = predicted_bps

    def lower(self, mean_bps: float, recent: Sequence[float]) -> float:
        """The lower bound for ``mean_bps``; half the recent minimum until enough history."""
        if len(self.ratios) < self.minimum:
            return 0.5 * min(mean_bps, *recent) if recent else 0.0
        return max(0.0, mean_bps * quantile(list(self.ratios), 1.0 - self.coverage))
