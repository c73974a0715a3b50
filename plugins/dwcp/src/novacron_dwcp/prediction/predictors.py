"""Classical DWCP bandwidth predictors: last sample, RobustMPC's discounted bound, Holt's trend.

EWMA and the harmonic mean of the last five samples are the core's builtins (``ewma``,
``harmonic``); these complete the set the evaluation harness compares.
"""

from __future__ import annotations

from abc import abstractmethod
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from novacron_dwcp.prediction._window import (
    RATE_FLOOR_BPS,
    ErrorQuantile,
    SampleWindow,
    harmonic_mean,
    positive_setting,
)
from novacron_sdk.prediction.interface import (
    BandwidthEstimate,
    BandwidthPredictor,
    BandwidthSample,
)


class OnlinePredictor(BandwidthPredictor):
    """A predictor whose lower bound is calibrated online from its own one-step errors."""

    window_size: ClassVar[int] = 8

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.window = SampleWindow(self.window_size)
        coverage = positive_setting(self.settings, "coverage", 0.9)
        self.errors = ErrorQuantile(coverage=min(coverage, 0.99))

    def observe(self, samples: Sequence[BandwidthSample]) -> None:
        """Add measurements, oldest first."""
        for sample in samples:
            self.errors.record(sample.bits_per_second)
            self.window.add(sample)
            self.update(sample)
            self.errors.expect(self.mean(sample.duration_s))

    def predict(self, horizon_s: float) -> BandwidthEstimate | None:
        """Mean over the next ``horizon_s`` seconds, and the online-calibrated lower bound."""
        if not self.window.count:
            return None
        mean = max(0.0, self.mean(horizon_s))
        return BandwidthEstimate(
            horizon_s=horizon_s,
            mean_bps=mean,
            lower_bps=min(mean, self.lower(mean)),
            coverage=self.coverage,
            predictor=self.name,
            samples=self.window.count,
        )

    @property
    def coverage(self) -> float:
        """The coverage the lower bound claims."""
        return self.errors.coverage

    def lower(self, mean_bps: float) -> float:
        """The lower bound for a predicted mean."""
        return self.errors.lower(mean_bps, self.window.rates(5))

    def update(self, sample: BandwidthSample) -> None:
        """Fold one new sample into the predictor's state (after it joined the window)."""

    @abstractmethod
    def mean(self, horizon_s: float) -> float:
        """The predicted mean rate over the next ``horizon_s`` seconds."""


class LastSamplePredictor(OnlinePredictor):
    """The last measured rate, for every horizon (the naive baseline)."""

    name: ClassVar[str] = "last-sample"
    window_size: ClassVar[int] = 5

    def mean(self, horizon_s: float) -> float:
        """The last sample's rate."""
        return self.window.samples[-1].bits_per_second


class RobustMpcPredictor(OnlinePredictor):
    """RobustMPC (Yin et al., SIGCOMM'15): harmonic mean of the last 5 samples, discounted.

    The mean is MPC's harmonic mean; the lower bound divides it by ``1 +`` the largest relative
    error of the last five predictions. Its coverage is not calibrated: the claim
    (``coverage`` setting, default 0.88) is what this bound achieved on the training split of
    the shared traces at 1 s and 10 s (see ``docs/dwcp-prediction.md``).
    """

    name: ClassVar[str] = "robust-mpc"
    window_size: ClassVar[int] = 5

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.claimed = min(positive_setting(self.settings, "coverage", 0.88), 1.0)
        self.relative_errors: deque[float] = deque(maxlen=5)
        self.last_prediction: float | None = None

    def update(self, sample: BandwidthSample) -> None:
        """Score the previous prediction, then predict the next sample."""
        actual = max(sample.bits_per_second, RATE_FLOOR_BPS)
        if self.last_prediction is not None:
            self.relative_errors.append(abs(self.last_prediction - actual) / actual)
        self.last_prediction = self.mean(sample.duration_s)

    def mean(self, horizon_s: float) -> float:
        """Harmonic mean of the last five rates."""
        return harmonic_mean(self.window.rates(5))

    @property
    def coverage(self) -> float:
        """The claimed coverage of the discounted bound."""
        return self.claimed

    def lower(self, mean_bps: float) -> float:
        """The mean divided by one plus the largest recent relative error."""
        return mean_bps / (1.0 + max(self.relative_errors, default=0.0))


class HoltPredictor(OnlinePredictor):
    """Holt's linear trend (double exponential smoothing) with a damped trend.

    Level and trend advance one step per sample. The mean over a horizon averages the damped
    forecasts across it, so 1 s and 10 s predictions differ whenever there is a trend.
    Settings: ``alpha`` (level, 0.5), ``beta`` (trend, 0.2), ``damping`` (0.9).
    """

    name: ClassVar[str] = "holt"

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.alpha = min(positive_setting(self.settings, "alpha", 0.5), 1.0)
        self.beta = min(positive_setting(self.settings, "beta", 0.2), 1.0)
        self.damping = min(positive_setting(self.settings, "damping", 0.9), 1.0)
        self.level: float | None = None
        self.trend = 0.0

    def update(self, sample: BandwidthSample) -> None:
        """Advance level and trend by one sample."""
        rate = sample.bits_per_second
        if self.level is None:
            self.level = rate
            return
        previous = self.level
        self.level = self.alpha * rate + (1 - self.alpha) * (previous + self.damping * self.trend)
        self.trend = self.beta * (self.level - previous) + (1 - self.beta) * self.damping * (
            self.trend
        )

    def mean(self, horizon_s: float) -> float:
        """Average of the damped trend forecasts over the horizon (in sample steps)."""
        level = self.level if self.level is not None else 0.0
        steps = max(1, round(horizon_s / self.window.step_s))
        phi = self.damping
        # Forecast k steps ahead is level + trend * (phi + ... + phi^k); average k = 1..steps.
        total, reach = 0.0, 0.0
        for k in range(1, steps + 1):
            reach += phi**k
            total += reach
        return max(0.0, level + self.trend * total / steps)
