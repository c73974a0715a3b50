"""Features of recent samples for the learned predictor, shared by training and inference.

Rates enter as log-ratios to the harmonic mean of the last five samples, so one model serves
links of any speed; the target is the log-ratio of the future mean to that same reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from novacron_dwcp.prediction._window import RATE_FLOOR_BPS, harmonic_mean

HISTORY = 30
"""Samples a feature vector looks back over."""

FEATURE_NAMES = (
    "lag1",
    "lag2",
    "lag3",
    "lag4",
    "lag5",
    "mean10",
    "mean30",
    "ewma_fast",
    "ewma_slow",
    "max10",
    "min10",
    "std5",
    "std20",
    "slope",
    "level_log10_mbps",
    "step_s",
    "log2_horizon",
    "horizon_steps",
    "outages10",
    "observed",
)


def _log_ratio(value: float, reference: float) -> float:
    return math.log(max(value, RATE_FLOOR_BPS) / reference)


def _std(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    centre = sum(values) / len(values)
    return math.sqrt(sum((v - centre) ** 2 for v in values) / (len(values) - 1))


def _ewma(values: Sequence[float], alpha: float) -> float:
    smoothed = values[0]
    for value in values[1:]:
        smoothed = alpha * value + (1 - alpha) * smoothed
    return smoothed


def reference_rate(rates: Sequence[float]) -> float:
    """The rate features and the target are relative to: harmonic mean of the last five."""
    return harmonic_mean(rates[-5:])


def features(rates: Sequence[float], step_s: float, horizon_s: float, observed: int) -> list[float]:
    """The feature vector (in :data:`FEATURE_NAMES` order) for predicting ``horizon_s`` ahead.

    ``rates`` are the last (up to :data:`HISTORY`) sample rates in bit/s, oldest first;
    ``observed`` is how many samples the link has seen in total.
    """
    recent = list(rates[-HISTORY:])
    reference = reference_rate(recent)
    logs = [_log_ratio(r, reference) for r in recent]
    lags = [logs[-k] if k <= len(logs) else 0.0 for k in range(1, 6)]
    last10, last3 = recent[-10:], recent[-3:]
    before3 = recent[-6:-3] or last3
    slope = (sum(last3) / len(last3) - sum(before3) / len(before3)) / reference
    return [
        *lags,
        _log_ratio(sum(last10) / len(last10), reference),
        _log_ratio(sum(recent) / len(recent), reference),
        _log_ratio(_ewma(recent, 0.5), reference),
        _log_ratio(_ewma(recent, 0.1), reference),
        _log_ratio(max(last10), reference),
        _log_ratio(min(last10), reference),
        _std(logs[-5:]),
        _std(logs[-20:]),
        slope,
        math.log10(reference / 1e6),
        step_s,
        math.log2(horizon_s),
        horizon_s / step_s,
        sum(1 for r in last10 if r < 0.05 * reference) / len(last10),
        float(min(observed, 50)),
    ]
