"""DWCP bandwidth prediction on held-out real traces: every predictor side by side.

The shared Pensieve traces (FCC broadband + Norway HSDPA, time in s, Mbit/s) are split by
file (``novacron_dwcp.prediction.traces.split_of``: per family, ordered by the SHA-256 of the
file name, every fifth file held out). The learned model was trained and calibrated on the
other files only; this benchmark reads only the held-out ones. At every sample from the 5th
on, each predictor has seen the trace up to that sample and predicts the mean rate of the
next 1 s and 10 s; scores are median and p90 absolute percentage error and lower-bound
coverage. Targets (issue 4): learned median APE at 10 s <= 0.75x the best of last sample,
EWMA and harmonic mean; the learned lower bound holds for >= 90 % of intervals.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Figure, parse_args, report

from novacron_dwcp.prediction.evaluation import (
    PredictorFactory,
    best_of,
    evaluate,
    format_table,
)
from novacron_dwcp.prediction.learned import load_model
from novacron_dwcp.prediction.traces import Trace, files_in_split, read_trace
from novacron_sdk.plugin.manager import build_plugin_manager

ROOT = Path(__file__).resolve().parent.parent
TRACES = ROOT.parent / "shared" / "data" / "bandwidth" / "pensieve-train"
BASELINES = ("last-sample", "ewma", "harmonic")
PREDICTORS = ("last-sample", "ewma", "harmonic", "robust-mpc", "holt", "learned")
QUICK_FILES = 12
LATENCY_HISTORY = 100
LATENCY_CALLS = 300
LATENCY_REPEATS = 5
LATENCY_TARGET_US = 1000.0
"""The planner calls predict() while deciding; it must stay well under a millisecond."""


def main() -> int:
    """Score every predictor on the held-out files and report the targets."""
    args = parse_args(__doc__.splitlines()[0], extra=_options)
    if not args.traces.is_dir():
        print(f"trace folder {args.traces} not found: nothing measured")
        return 0
    held_out = files_in_split(args.traces, "heldout")
    trained_on = set(files_in_split(args.traces, "train"))
    trained_on |= set(files_in_split(args.traces, "calibration"))
    if trained_on & set(held_out):
        raise SystemExit("the held-out split overlaps the training split")
    if args.quick:
        held_out = held_out[::2][:QUICK_FILES]
    traces = [read_trace(p) for p in held_out]
    registry = build_plugin_manager().predictors
    factories = {name: registry.get(name) for name in PREDICTORS}
    started = time.perf_counter()
    scores = evaluate(traces, factories)
    elapsed = time.perf_counter() - started
    print(f"{len(traces)} held-out trace files, {sum(len(t.times) for t in traces)} samples")
    print(format_table(scores))
    print(f"evaluation took {elapsed:.1f} s\n")
    by_key = {(s.predictor, s.horizon_s): s for s in scores}
    figures = []
    for horizon in (10.0, 1.0):
        best = best_of(scores, BASELINES, horizon)
        learned = by_key["learned", horizon]
        assert best is not None
        figures.append(
            Figure(
                f"learned median APE {horizon:g}s",
                learned.median_ape * 100,
                "%",
                baseline_name=f"best of last/EWMA/harmonic ({best.predictor})",
                baseline_value=best.median_ape * 100,
                target="<= 0.75x baseline" if horizon == 10.0 else None,
                met=learned.median_ape <= 0.75 * best.median_ape if horizon == 10.0 else None,
            )
        )
        figures.append(
            Figure(
                f"learned p90 APE {horizon:g}s",
                learned.p90_ape * 100,
                "%",
                baseline_name=f"best of last/EWMA/harmonic ({best.predictor})",
                baseline_value=by_key[best.predictor, horizon].p90_ape * 100,
            )
        )
        figures.append(
            Figure(
                f"learned lower-bound coverage {horizon:g}s",
                learned.coverage * 100,
                "%",
                baseline_name="robust-mpc bound",
                baseline_value=by_key["robust-mpc", horizon].coverage * 100,
                target=">= 90 %",
                met=learned.coverage >= 0.9,
            )
        )
    figures.append(_latency_figure(traces, factories["learned"], factories["ewma"]))
    model = load_model()
    extra = {
        "held_out_files": [p.name for p in held_out],
        "scores": [s.__dict__ for s in scores],
        "model_training": dict(model.metadata),
    }
    return report("prediction", "DWCP bandwidth prediction (held-out traces)", args, figures, extra)


def _predict_time_us(trace: Trace, factory: PredictorFactory, repeats: int) -> list[float]:
    """Microseconds per ``predict(10.0)`` after a full history, one figure per repeat."""
    predictor = factory()
    predictor.observe(trace.samples()[:LATENCY_HISTORY])
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(LATENCY_CALLS):
            predictor.predict(10.0)
        times.append((time.perf_counter() - started) / LATENCY_CALLS * 1e6)
    return times


def _latency_figure(
    traces: list[Trace], learned: PredictorFactory, ewma: PredictorFactory
) -> Figure:
    """How long the migration planner waits for the learned estimate, next to EWMA's."""
    trace = max(traces, key=lambda t: len(t.times))
    ours = _predict_time_us(trace, learned, LATENCY_REPEATS)
    theirs = _predict_time_us(trace, ewma, LATENCY_REPEATS)
    return Figure(
        "learned predict() time",
        statistics.median(ours),
        "us",
        baseline_name="ewma predict()",
        baseline_value=statistics.median(theirs),
        target="< 1000 us",
        met=statistics.median(ours) < LATENCY_TARGET_US,
        samples=ours,
    )


def _options(parser: object) -> None:
    parser.add_argument(  # type: ignore[attr-defined]
        "--traces", type=Path, default=TRACES, help="folder of trace files (shared format)"
    )


if __name__ == "__main__":
    sys.exit(main())
