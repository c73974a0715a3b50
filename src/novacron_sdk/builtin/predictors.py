"""The builtin bandwidth predictors: ``ewma`` and ``harmonic`` (MPC's harmonic mean).

Both treat every sample as one observation of throughput (the sample's duration is not
used as a weight) and predict the same mean whatever the horizon: they model the level of
the link, not its trend. The coverage each reports is a claim derived from a model
assumption, stated below; it is not measured here. Negative and NaN samples are rejected by
:class:`~novacron_sdk.prediction.interface.BandwidthSample` itself; infinite ones here.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import Any

from novacron_sdk.errors import PredictionError
from novacron_sdk.prediction.interface import (
    BandwidthEstimate,
    BandwidthPredictor,
    BandwidthSample,
)

CLAIMED_COVERAGE = 0.9
# For a normal distribution the mean absolute deviation is sigma * sqrt(2 / pi), so the
# one-sided 90 % bound mean - 1.2816 sigma is mean - 1.2816 * sqrt(pi / 2) * MAD.
EWMA_Z = NormalDist().inv_cdf(CLAIMED_COVERAGE) * math.sqrt(math.pi / 2)
HARMONIC_WINDOW = 5


def _value(sample: BandwidthSample) -> float:
    value = sample.bits_per_second
    if not math.isfinite(value):
        msg = f"bandwidth sample at t={sample.t} is {value}; samples must be finite"
        raise PredictionError(msg)
    return value


class EwmaPredictor(BandwidthPredictor):
    """Exponentially weighted moving average, with a bound from the EWMA absolute deviation.

    ``mean`` is the EWMA of the samples (setting ``alpha``, default 0.3: the weight of the
    newest sample). ``dev`` is the EWMA, with the same alpha, of ``|sample - mean|`` taken
    before each update (as TCP's RTTVAR), started at half the first sample (RFC 6298's
    choice) so that one sample does not claim certainty. The lower bound is
    ``mean - EWMA_Z * dev`` (about 1.606 deviations): under the assumption that samples are
    normal around the mean, 90 % of intervals would be at or above it. That is the claimed
    coverage; real traces with bursts or trends will deviate from it.
    """

    name = "ewma"

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        alpha = self.settings.get("alpha", 0.3)
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha <= 1:
            msg = f"ewma predictor setting 'alpha' must be a number in (0, 1], got {alpha!r}"
            raise PredictionError(msg)
        self.alpha = float(alpha)
        self._mean: float | None = None
        self._dev = 0.0
        self._count = 0

    def observe(self, samples: Sequence[BandwidthSample]) -> None:
        """Fold ``samples`` (oldest first) into the averages."""
        values = [_value(s) for s in samples]
        a = self.alpha
        for x in values:
            if self._mean is None:
                self._mean, self._dev = x, x / 2
            else:
                self._dev = (1 - a) * self._dev + a * abs(x - self._mean)
                self._mean = (1 - a) * self._mean + a * x
            self._count += 1

    def predict(self, horizon_s: float) -> BandwidthEstimate | None:
        """The EWMA and its lower bound; the horizon does not change them."""
        if self._mean is None:
            return None
        return BandwidthEstimate(
            horizon_s=horizon_s,
            mean_bps=self._mean,
            lower_bps=max(0.0, self._mean - EWMA_Z * self._dev),
            coverage=CLAIMED_COVERAGE,
            predictor=self.name,
            samples=self._count,
        )


class HarmonicMeanPredictor(BandwidthPredictor):
    """Harmonic mean of the last 5 samples (MPC), bounded below as RobustMPC does.

    The harmonic mean is pulled down by slow samples, which makes it robust to short
    bursts. Each new sample is also used to score the prediction made just before it:
    ``error = |predicted - actual| / actual``. The lower bound is ``mean / (1 + e)`` with
    ``e`` the largest error of the last 5 predictions; before any prediction could be
    scored it equals the mean. The 90 % coverage is RobustMPC's intent for this bound, a
    claim, not a measured guarantee.
    """

    name = "harmonic"

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        self._window: deque[float] = deque(maxlen=HARMONIC_WINDOW)
        self._errors: deque[float] = deque(maxlen=HARMONIC_WINDOW)

    def _harmonic_mean(self) -> float:
        if any(x == 0 for x in self._window):
            return 0.0
        return len(self._window) / sum(1 / x for x in self._window)

    def observe(self, samples: Sequence[BandwidthSample]) -> None:
        """Score the previous prediction against each sample, then add it to the window."""
        values = [_value(s) for s in samples]
        for x in values:
            if self._window:
                predicted = self._harmonic_mean()
                if x > 0:
                    self._errors.append(abs(predicted - x) / x)
                else:
                    self._errors.append(0.0 if predicted == 0 else math.inf)
            self._window.append(x)

    def predict(self, horizon_s: float) -> BandwidthEstimate | None:
        """The harmonic mean and its RobustMPC lower bound; the horizon does not change them."""
        if not self._window:
            return None
        mean = self._harmonic_mean()
        worst = max(self._errors, default=0.0)
        return BandwidthEstimate(
            horizon_s=horizon_s,
            mean_bps=mean,
            lower_bps=mean / (1 + worst),
            coverage=CLAIMED_COVERAGE,
            predictor=self.name,
            samples=len(self._window),
        )
