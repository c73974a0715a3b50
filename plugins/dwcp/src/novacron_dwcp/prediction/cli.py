"""``novacron predict``: every registered predictor scored side by side on trace files."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from novacron_sdk.cli.interface import CliCommand
from novacron_sdk.cli.output import echo, error, warn
from novacron_sdk.errors import NovaCronError

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
    from novacron_dwcp.prediction.evaluation import evaluate, format_table, to_json
    from novacron_dwcp.prediction.traces import read_trace, trace_files
    from novacron_sdk.plugin.manager import build_plugin_manager

    try:
        horizons = [float(h) for h in args.horizons.split(",") if h.strip()]
        if not horizons or min(horizons) <= 0:
            error("--horizons needs positive numbers, e.g. 1,10")
            return 2
        paths: list[Path] = []
        for path in args.trace:
            paths.extend(trace_files(path) if path.is_dir() else [path])
        traces = [read_trace(p) for p in paths]
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
        scores = evaluate(traces, factories, horizons)
    except (NovaCronError, ValueError) as exc:
        error(f"novacron predict: {exc}")
        return 2
    echo(to_json(scores) if args.json else format_table(scores))
    return 0


COMMAND = CliCommand(help=HELP, configure=configure, run=run)
"""The ``predict`` subcommand."""
