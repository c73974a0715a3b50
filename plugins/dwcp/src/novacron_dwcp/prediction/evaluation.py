"""The evaluation harness: every predictor replayed over traces, scored per horizon.

At each sample (after a short warm-up) a predictor has observed the trace up to that sample and
predicts the mean rate over the next ``h`` seconds; the truth is the trace's mean over that
interval. Scores: median and p90 absolute percentage error, and the share of intervals whose
true mean is at or above the lower bound (empirical coverage), next to the claimed coverage.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

from novacron_dwcp.prediction._window import RATE_FLOOR_BPS, quantile
from novacron_dwcp.prediction.traces import Trace
from novacron_sdk.prediction.interface import BandwidthPredictor

PredictorFactory = Callable[[], BandwidthPredictor]

DEFAULT_HORIZONS = (1.0, 10.0)
WARMUP_SAMPLES = 5
"""Samples observed before scoring starts, so that 5-sample windows are full."""


@dataclass(frozen=True)
class Score:
    """How one predictor did at one horizon."""

    predictor: str
    horizon_s: float
    intervals: int
    median_ape: float
    p90_ape: float
    coverage: float
    claimed_coverage: float


@dataclass
class _Tally:
    errors: list[float]
    covered: int = 0
    claimed: float = 0.0


def evaluate(
    traces: Sequence[Trace],
    predictors: Mapping[str, PredictorFactory],
    horizons: Sequence[float] = DEFAULT_HORIZONS,
    warmup: int = WARMUP_SAMPLES,
    on_trace: Callable[[int], None] | None = None,
) -> list[Score]:
    """Replay every trace through a fresh instance of every predictor and score them.

    Absolute percentage error divides by the true mean floored at 1 kbit/s, so an outage
    interval counts as a large error instead of an infinite one. ``on_trace`` is called with
    the number of traces done after each one (for a progress display).
    """
    tallies = {(name, h): _Tally([]) for name in predictors for h in horizons}
    for done, trace in enumerate(traces, 1):
        samples = trace.samples()
        for name, factory in predictors.items():
            predictor = factory()
            for index, sample in enumerate(samples):
                predictor.observe([sample])
                if index + 1 < warmup:
                    continue
                for horizon in horizons:
                    if sample.t + horizon > trace.end:
                        continue
                    estimate = predictor.predict(horizon)
                    if estimate is None:
                        continue
                    actual = trace.mean(sample.t, sample.t + horizon)
                    tally = tallies[name, horizon]
                    tally.errors.append(
                        abs(estimate.mean_bps - actual) / max(actual, RATE_FLOOR_BPS)
                    )
                    tally.covered += actual >= estimate.lower_bps
                    tally.claimed = estimate.coverage
        if on_trace is not None:
            on_trace(done)
    return [
        Score(
            predictor=name,
            horizon_s=horizon,
            intervals=len(t.errors),
            median_ape=quantile(t.errors, 0.5) if t.errors else float("nan"),
            p90_ape=quantile(t.errors, 0.9) if t.errors else float("nan"),
            coverage=t.covered / len(t.errors) if t.errors else float("nan"),
            claimed_coverage=t.claimed,
        )
        for (name, horizon), t in tallies.items()
    ]


def best_of(scores: Sequence[Score], names: Sequence[str], horizon_s: float) -> Score | None:
    """The lowest median APE among ``names`` at ``horizon_s``."""
    candidates = [s for s in scores if s.predictor in names and s.horizon_s == horizon_s]
    return min(candidates, key=lambda s: s.median_ape, default=None)


def format_table(scores: Sequence[Score]) -> str:
    """Scores side by side: one row per predictor, median/p90 APE and coverage per horizon."""
    horizons = sorted({s.horizon_s for s in scores})
    names = list(dict.fromkeys(s.predictor for s in scores))
    by_key = {(s.predictor, s.horizon_s): s for s in scores}
    header = f"{'predictor':<14}" + "".join(
        f" | {f'{h:g}s med APE':>12} {'p90 APE':>8} {'cover':>6} {'claim':>5}" for h in horizons
    )
    lines = [header, "-" * len(header)]
    for name in names:
        row = f"{name:<14}"
        for h in horizons:
            s = by_key[name, h]
            row += (
                f" | {s.median_ape:>12.1%} {s.p90_ape:>8.1%} {s.coverage:>6.1%}"
                f" {s.claimed_coverage:>5.2f}"
            )
        lines.append(row)
    return "\n".join(lines)


def to_json(scores: Sequence[Score]) -> str:
    """Scores as a JSON list of objects."""
    return json.dumps([asdict(s) for s in scores], indent=2)
