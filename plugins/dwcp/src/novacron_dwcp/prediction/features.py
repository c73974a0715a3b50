"""Features of recent samples for the learned predictor, shared by training and inference.

Rates enter as log-ratios to the harmonic mean of the last five samples, so one model serves
links of any speed; the target is the log-ratio of the future mean to that same reference.
Everything is computed from the last :data:`HISTORY` samples alone (no state outside the
window), so the training script and the predictor produce identical rows by construction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

from novacron_dwcp.prediction._window import RATE_FLOOR_BPS, harmonic_mean

HISTORY = 60
"""Samples a feature vector looks back over."""

LAGS = 10
WINDOWS = (5, 10, 20, 30, 60)
"""Windows (in samples) summarised by mean, median, min, max, quartiles and harmonic mean."""
STATISTICS = ("mean", "median", "min", "max", "q25", "q75", "harmonic")
EWMA_ALPHAS = (0.05, 0.1, 0.2, 0.3, 0.5)
SPREAD_WINDOWS = (5, 10, 30, 60)
OUTAGE_SHARE = 0.05
"""A sample below this share of the reference rate counts as an outage."""

FEATURE_NAMES = (
    *(f"lag{k}" for k in range(1, LAGS + 1)),
    *(f"{stat}{w}" for w in WINDOWS for stat in STATISTICS),
    *(f"ewma{a:g}" for a in EWMA_ALPHAS),
    *(f"std{w}" for w in SPREAD_WINDOWS),
    "absdiff10",
    "absdiff60",
    "slope10",
    "slope30",
    "step_s",
    "horizon_s",
    "horizon_steps",
    "outages10",
    "outages60",
)


def _log_ratio(value: float, reference: float) -> float:
    return math.log(max(value, RATE_FLOOR_BPS) / reference)


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of an already sorted, non-empty sequence."""
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    fraction = position - low
    return ordered[low] * (1 - fraction) + ordered[high] * fraction


def _std(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    centre = sum(values) / len(values)
    return math.sqrt(sum((v - centre) ** 2 for v in values) / (len(values) - 1))


def _mean_abs_step(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    return sum(abs(b - a) for a, b in pairwise(values)) / (len(values) - 1)


def _slope(values: Sequence[float]) -> float:
    """Least-squares slope per sample."""
    n = len(values)
    if n < 2:
        return 0.0
    centre_x = (n - 1) / 2
    centre_y = sum(values) / n
    num = sum((i - centre_x) * (v - centre_y) for i, v in enumerate(values))
    den = sum((i - centre_x) ** 2 for i in range(n))
    return num / den


def _ewma(values: Sequence[float], alpha: float) -> float:
    smoothed = values[0]
    for value in values[1:]:
        smoothed = alpha * value + (1 - alpha) * smoothed
    return smoothed


def reference_rate(rates: Sequence[float]) -> float:
    """The rate features and the target are relative to: harmonic mean of the last five."""
    return harmonic_mean(rates[-5:])


def _window_statistics(segment: Sequence[float], reference: float) -> list[float]:
    ordered = sorted(segment)
    values = (
        sum(segment) / len(segment),
        _quantile(ordered, 0.5),
        ordered[0],
        ordered[-1],
        _quantile(ordered, 0.25),
        _quantile(ordered, 0.75),
        harmonic_mean(segment),
    )
    return [_log_ratio(v, reference) for v in values]


def features(rates: Sequence[float], step_s: float, horizon_s: float) -> list[float]:
    """The feature vector (in :data:`FEATURE_NAMES` order) for predicting ``horizon_s`` ahead.

    ``rates`` are the most recent sample rates in bit/s, oldest first (at least one; only the
    last :data:`HISTORY` are used); ``step_s`` is the sampling step.
    """
    recent = list(rates[-HISTORY:])
    reference = reference_rate(recent)
    logs = [_log_ratio(r, reference) for r in recent]
    row = [logs[-k] if k <= len(logs) else logs[0] for k in range(1, LAGS + 1)]
    for window in WINDOWS:
        row += _window_statistics(recent[-window:], reference)
    row += [_log_ratio(_ewma(recent, alpha), reference) for alpha in EWMA_ALPHAS]
    row += [_std(logs[-window:]) for window in SPREAD_WINDOWS]
    row += [_mean_abs_step(logs[-10:]), _mean_abs_step(logs)]
    row += [_slope(logs[-10:]), _slope(logs[-30:])]
    last10 = recent[-10:]
    outage = OUTAGE_SHARE * reference
    row += [
        step_s,
        horizon_s,
        horizon_s / step_s,
        sum(1 for r in last10 if r < outage) / len(last10),
        sum(1 for r in recent if r < outage) / len(recent),
    ]
    return row
