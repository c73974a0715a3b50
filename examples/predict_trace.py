"""Score every bandwidth predictor on a trace, then use one predictor directly.

Run it with ``python examples/predict_trace.py [TRACE]``. TRACE is a file in the shared
format (``time_seconds<TAB>Mbit/s`` a line); without it the example makes a synthetic link
(a slow drift with noise and a brief outage) in a temporary file.
"""

from __future__ import annotations

import math
import random
import sys
import tempfile
from pathlib import Path

from novacron_dwcp.prediction.evaluation import (
    DEFAULT_HORIZONS,
    WARMUP_SAMPLES,
    evaluate,
    format_table,
)
from novacron_dwcp.prediction.learned import LearnedPredictor
from novacron_dwcp.prediction.traces import read_trace
from novacron_sdk.errors import NovaCronError
from novacron_sdk.plugin.manager import build_plugin_manager


def synthetic_trace(path: Path, seconds: int = 300) -> None:
    """Write a drifting, noisy link with an outage at t = 150 s."""
    rng = random.Random(1)
    lines = []
    for t in range(seconds):
        level = 40 + 20 * math.sin(t / 40)
        rate = 0.0 if 150 <= t < 153 else max(0.0, level * (1 + rng.gauss(0, 0.15)))
        lines.append(f"{t}\t{rate:.3f}")
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    """Evaluate all registered predictors, then predict the next 10 s with the learned one."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if len(sys.argv) > 1:
                path = Path(sys.argv[1])
            else:
                path = Path(tmp) / "synthetic.tsv"
                synthetic_trace(path)
            run(path)
    except (NovaCronError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def run(path: Path) -> None:
    """Score every predictor on the trace at ``path`` and print one learned prediction."""
    trace = read_trace(path)
    registry = build_plugin_manager().predictors
    predictors = {name: registry.get(name) for name in registry.names()}
    print(f"{path.name}: {len(trace.times)} samples")
    scores = evaluate([trace], predictors)
    if any(score.intervals for score in scores):
        print(format_table(scores))
    else:
        print(
            f"too short to score the predictors: scoring starts at sample {WARMUP_SAMPLES} "
            f"and needs at least {min(DEFAULT_HORIZONS):g} s of trace after it"
        )

    predictor = LearnedPredictor()
    predictor.observe(trace.samples())
    estimate = predictor.predict(10.0)
    assert estimate is not None
    print(
        f"\nnext 10 s: mean {estimate.mean_bps / 1e6:.1f} Mbit/s, at least "
        f"{estimate.lower_bps / 1e6:.1f} Mbit/s with claimed coverage {estimate.coverage:.0%}"
    )


if __name__ == "__main__":
    sys.exit(main())
