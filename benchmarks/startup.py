"""CLI start-up time: ``novacron --help`` and ``novacron plugins list`` next to Python baselines.

All four commands are timed in the same run, interleaved: the median wall time of N runs
each, after one warm-up that also fills a private bytecode cache (an installed package has
its ``.pyc`` files): ``python -c pass``, ``python -c "import pluggy, pydantic"`` (the
baseline: the two libraries the core cannot start without), ``python -m novacron_sdk --help``
and ``python -m novacron_sdk plugins list``. Target: ``--help`` within 300 ms of the
baseline. Installed plugins are loaded as in real use (their hook modules must import
cheaply).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Figure, bytecode_cache_env, median, parse_args, report, time_commands

HELP_BUDGET_MS = 300.0
PY = sys.executable
COMMANDS = {
    "python -c pass": [PY, "-c", "pass"],
    "import pluggy, pydantic": [PY, "-c", "import pluggy, pydantic"],
    "novacron --help": [PY, "-m", "novacron_sdk", "--help"],
    "novacron plugins list": [PY, "-m", "novacron_sdk", "plugins", "list"],
}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module docstring."""
    args = parse_args(__doc__ or "", argv, _extra)
    runs = args.runs or (5 if args.quick else 20)
    with tempfile.TemporaryDirectory(prefix="novacron-bench-pyc-") as cache:
        seconds = time_commands(COMMANDS, runs=runs, env=bytecode_cache_env(Path(cache)))
    ms = {name: [t * 1000 for t in samples] for name, samples in seconds.items()}
    med = {name: median(samples) for name, samples in ms.items()}
    empty, baseline = med["python -c pass"], med["import pluggy, pydantic"]
    overhead = med["novacron --help"] - baseline
    figures = [
        Figure(
            "import pluggy, pydantic",
            baseline,
            "ms",
            "python -c pass",
            empty,
            samples=ms["import pluggy, pydantic"],
        ),
        Figure(
            "novacron --help",
            med["novacron --help"],
            "ms",
            "import pluggy, pydantic",
            baseline,
            samples=ms["novacron --help"],
        ),
        Figure(
            "novacron --help minus baseline",
            overhead,
            "ms",
            "budget",
            HELP_BUDGET_MS,
            target=f"<= {HELP_BUDGET_MS:.0f} ms over import pluggy, pydantic",
            met=overhead <= HELP_BUDGET_MS,
        ),
        Figure(
            "novacron plugins list",
            med["novacron plugins list"],
            "ms",
            "import pluggy, pydantic",
            baseline,
            samples=ms["novacron plugins list"],
        ),
    ]
    return report(
        "startup",
        f"CLI start-up, median of {runs} runs",
        args,
        figures,
        {"runs": runs, "commands": {k: " ".join(v[1:]) for k, v in COMMANDS.items()}},
    )


def _extra(parser: object) -> None:
    import argparse

    assert isinstance(parser, argparse.ArgumentParser)
    parser.add_argument("--runs", type=int, help="runs per command (default 20, 5 with --quick)")


if __name__ == "__main__":
    raise SystemExit(main())
