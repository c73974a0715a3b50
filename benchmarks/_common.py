"""Shared harness for benchmarks/<name>.py: options, figures, timing, table and JSON output.

Every benchmark takes ``--quick`` (finishes in under a minute) and ``--json PATH`` (writes every
figure with its baseline, measured in the same run, and their ratio), and prints a table.
Numbers come only from the run that prints them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass
class Figure:
    """One measured figure, next to the baseline it should be judged against.

    ``ratio`` is ``value / baseline_value`` when both exist. ``met`` is True/False when the
    figure has a target (described in ``target``), None when it has none.
    """

    name: str
    value: float
    unit: str
    baseline_name: str | None = None
    baseline_value: float | None = None
    target: str | None = None
    met: bool | None = None
    ratio: float | None = field(default=None)
    samples: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.ratio is None and self.baseline_value:
            self.ratio = self.value / self.baseline_value


def parse_args(
    description: str,
    argv: Sequence[str] | None = None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """The options every benchmark has (``--quick``, ``--json PATH``, ``--check``) + ``extra``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="fewer runs; under a minute")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the figures as JSON")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when a figure misses its target"
    )
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


def time_command(
    command: Sequence[str],
    *,
    runs: int,
    warmup: int = 1,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> list[float]:
    """Wall times in seconds of ``runs`` executions of ``command`` (after ``warmup`` ones).

    Output is discarded; a failing command stops the benchmark with its stderr.
    """
    times: list[float] = []
    for index in range(warmup + runs):
        started = time.perf_counter()
        proc = subprocess.run(
            list(command),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
        )
        elapsed = time.perf_counter() - started
        if proc.returncode != 0:
            msg = f"{' '.join(command)} exited {proc.returncode}:\n{proc.stderr.decode()}"
            raise SystemExit(msg)
        if index >= warmup:
            times.append(elapsed)
    return times


def time_commands(
    commands: Mapping[str, Sequence[str]],
    *,
    runs: int,
    warmup: int = 1,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> dict[str, list[float]]:
    """Wall times (seconds) of each named command, run round-robin ``runs`` times.

    Interleaving the commands spreads any change in machine load evenly over all of them, so
    a figure and its baseline see the same conditions.
    """
    times: dict[str, list[float]] = {name: [] for name in commands}
    for index in range(warmup + runs):
        for name, command in commands.items():
            elapsed = time_command(command, runs=1, warmup=0, env=env, cwd=cwd)[0]
            if index >= warmup:
                times[name].append(elapsed)
    return times


def bytecode_cache_env(directory: Path) -> dict[str, str]:
    """The current environment with bytecode caching on, cached under ``directory``.

    Users' installs have ``.pyc`` files; a shell with ``PYTHONDONTWRITEBYTECODE`` would make
    every run compile the sources again and measure the compiler instead of start-up.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(directory)
    return env


def median(values: Sequence[float]) -> float:
    """The median of ``values``."""
    return statistics.median(values)


def environment() -> dict[str, Any]:
    """Where the numbers were measured (kept next to them in the JSON)."""
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _format(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return f"{text} {unit}".strip()


def print_table(title: str, figures: Sequence[Figure]) -> None:
    """Print the figures as a table (rich when available, plain text otherwise)."""
    header = ("figure", "value", "baseline", "baseline value", "ratio", "target", "met")
    rows = [
        (
            f.name,
            _format(f.value, f.unit),
            f.baseline_name or "-",
            _format(f.baseline_value, f.unit),
            _format(f.ratio, "x") if f.ratio is not None else "-",
            f.target or "-",
            {True: "yes", False: "NO", None: "-"}[f.met],
        )
        for f in figures
    ]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
        print(title)
        for row in (header, *rows):
            print(
                "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
            )
        return
    table = Table(title=title)
    for column in header:
        table.add_column(column)
    for row in rows:
        table.add_row(*row, style="bold red" if row[-1] == "NO" else None)
    Console(width=max(120, Console().width)).print(table)


def write_json(
    path: Path,
    benchmark: str,
    args: argparse.Namespace,
    figures: Sequence[Figure],
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write ``{benchmark, quick, environment, figures: [...], ...extra}`` to ``path``."""
    data = {
        "benchmark": benchmark,
        "quick": bool(args.quick),
        "environment": environment(),
        "figures": [asdict(f) for f in figures],
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def report(
    benchmark: str,
    title: str,
    args: argparse.Namespace,
    figures: Sequence[Figure],
    extra: Mapping[str, Any] | None = None,
) -> int:
    """Print the table, write the JSON if asked, and return the exit code (see ``--check``)."""
    print_table(title, figures)
    if args.json is not None:
        write_json(args.json, benchmark, args, figures, extra)
        print(f"wrote {args.json}")
    missed = [f.name for f in figures if f.met is False]
    if missed:
        print(f"target missed: {', '.join(missed)}")
    return 1 if missed and args.check else 0
