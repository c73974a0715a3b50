"""``novacron predict``: every registered predictor scored side by side on trace files."""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from novacron_sdk.cli.interface import CliCommand
from novacron_sdk.cli.output import echo, error, warn
from novacron_sdk.errors import ConfigError, NovaCronError

if TYPE_CHECKING:
    from novacron_dwcp.prediction.evaluation import PredictorFactory, Score
    from novacron_dwcp.prediction.traces import Trace

HELP = "score every bandwidth predictor on trace files (median/p90 APE, lower-bound coverage)"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``predict`` arguments."""
    parser.add_argument(
        "--trace",
        type=Path,
        action="append",
        required=True,
        help="trace file, 'time_s<TAB>Mbit/s' a line (repeat for several; a folder reads all)",
    )
    parser.add_argument("--json", action="store_true", help="print the scores as JSON")
    parser.add_argument(
        "--predictors", default="", help="comma-separated names (default: every registered one)"
    )
    parser.add_argument(
        "--horizons", default="1,10", help="comma-separated horizons in seconds (default 1,10)"
    )


def run(args: argparse.Namespace) -> int:
    """Score the predictors and print a table (or JSON); exit 2 on bad input."""
    from novacron_dwcp.prediction.evaluation import format_table, to_json
    from novacron_dwcp.prediction.traces import read_trace, trace_files
    from novacron_sdk.plugin.manager import build_plugin_manager

    try:
        horizons = [float(h) for h in args.horizons.split(",") if h.strip()]
    except ValueError:
        error(f"--horizons takes comma-separated seconds, e.g. 1,10; got {args.horizons!r}")
        return 2
    if not horizons or not all(math.isfinite(h) and h > 0 for h in horizons):
        error(f"--horizons needs positive numbers, e.g. 1,10; got {args.horizons!r}")
        return 2
    try:
        paths: list[Path] = []
        for path in args.trace:
            if not path.is_dir():
                paths.append(path)
                continue
            found = trace_files(path)
            if not found:
                msg = (
                    f"folder {path} holds no trace files (README/LICENSE files are skipped); "
                    "put 'time_seconds<TAB>Mbit_per_s' files in it or pass --trace FILE"
                )
                raise ConfigError(msg)
            paths.extend(found)
        traces = [read_trace(p) for p in paths]
        _check_lengths(paths, traces, horizons)
        # ``novacron`` hands its plugin manager over; a direct call builds one.
        plugins = getattr(args, "plugins", None) or build_plugin_manager()
        registry = plugins.predictors
        wanted: Sequence[str] = [n for n in args.predictors.split(",") if n] or registry.names()
        factories = {}
        for name in wanted:
            try:
                factories[name] = registry.get(name)
            except NovaCronError as exc:
                if args.predictors:
                    raise
                warn(f"skipping predictor {name!r}: {exc}")
        scores = _evaluate_with_progress(traces, factories, horizons)
    except (NovaCronError, ValueError) as exc:
        error(f"novacron predict: {exc}")
        return 2
    echo(to_json(scores) if args.json else format_table(scores))
    return 0


def _evaluate_with_progress(
    traces: Sequence[Trace], factories: Mapping[str, PredictorFactory], horizons: list[float]
) -> list[Score]:
    """``evaluate``, with a progress bar on stderr when it is a terminal (many traces take
    a while: all 129 shared files take about 45 s)."""
    import sys

    from novacron_dwcp.prediction.evaluation import evaluate

    if not sys.stderr.isatty() or len(traces) < 2:
        return evaluate(traces, factories, horizons)
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("scoring traces", total=len(traces))
        return evaluate(
            traces, factories, horizons, on_trace=lambda done: progress.update(task, completed=done)
        )


def _scorable(trace: Trace, horizon: float) -> bool:
    """Whether at least one interval of ``horizon`` s is scored on ``trace``.

    Scoring starts at the ``WARMUP_SAMPLES``-th sample and needs the interval to end inside
    the trace; later samples leave less room, so the first scored one decides.
    """
    from novacron_dwcp.prediction.evaluation import WARMUP_SAMPLES

    return (
        len(trace.times) >= WARMUP_SAMPLES
        and trace.times[WARMUP_SAMPLES - 1] + horizon <= trace.end
    )


def _too_short(path: Path, trace: Trace, horizon: float) -> str:
    """Why ``trace`` scores no interval at ``horizon``, with the length it would need."""
    from novacron_dwcp.prediction.evaluation import WARMUP_SAMPLES

    count = len(trace.times)
    span = trace.end - trace.times[0]
    step = span / (count - 1)
    needed = WARMUP_SAMPLES + max(1, math.ceil(horizon / step - 1e-9))
    return (
        f"{path} is too short to score: {count} sample(s) spanning {span:g} s; scoring starts "
        f"at sample {WARMUP_SAMPLES} and needs {horizon:g} s of trace after it (the shortest "
        f"of --horizons), e.g. {needed} samples {step:g} s apart"
    )


def _check_lengths(paths: Sequence[Path], traces: Sequence[Trace], horizons: list[float]) -> None:
    """Refuse traces too short to score; warn about traces and horizons that score nothing."""
    shortest = min(horizons)
    short = [(p, t) for p, t in zip(paths, traces, strict=True) if not _scorable(t, shortest)]
    if len(short) == len(traces):
        reasons = [_too_short(p, t, shortest) for p, t in short[:3]]
        if len(short) > 3:
            reasons.append(f"and {len(short) - 3} more trace(s) like these")
        raise ConfigError("; ".join(reasons))
    for path, trace in short:
        warn(f"{_too_short(path, trace, shortest)}; it is left out of the scores")
    for horizon in sorted(set(horizons)):
        if not any(_scorable(t, horizon) for t in traces):
            warn(
                f"no trace is long enough for the {horizon:g} s horizon; its columns stay "
                "empty (nan): pass longer traces or shorter --horizons"
            )


COMMAND = CliCommand(help=HELP, configure=configure, run=run)
"""The ``predict`` subcommand."""
