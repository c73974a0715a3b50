"""Bandwidth trace files (``time_s<TAB>Mbit/s`` a line) and their deterministic file split.

A trace is read as a piecewise-constant rate: the sample at ``t_i`` is the mean throughput over
``(t_{i-1}, t_i]``, as :class:`BandwidthSample` defines it. :meth:`Trace.mean` gives the true
mean over any future interval, which is what every predictor is scored against.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from novacron_sdk.errors import ConfigError
from novacron_sdk.prediction.interface import BandwidthSample

BITS_PER_MEGABIT = 1_000_000.0

SPLITS = ("train", "calibration", "heldout")
"""The three file splits: training, calibration of the lower bound, held-out evaluation."""


@dataclass(frozen=True)
class Trace:
    """One trace: sample end times (s) and rates (bit/s), with a prefix integral for means."""

    name: str
    times: tuple[float, ...]
    rates: tuple[float, ...]
    starts: tuple[float, ...]
    cumulative: tuple[float, ...]

    @classmethod
    def from_points(cls, name: str, points: list[tuple[float, float]]) -> Trace:
        """Build a trace from ``(time_s, bits_per_second)`` points with finite, strictly
        increasing times and finite, non-negative rates (:func:`read_trace` checks files line
        by line and names the line)."""
        if len(points) < 2:
            msg = f"trace {name!r} has {len(points)} sample(s); at least 2 are needed"
            raise ConfigError(msg)
        for index, (t, rate) in enumerate(points):
            if not (math.isfinite(t) and math.isfinite(rate)) or rate < 0:
                msg = (
                    f"trace {name!r}: sample {index} ({t}, {rate}) needs a finite time and a "
                    "finite, non-negative rate"
                )
                raise ConfigError(msg)
        times = [p[0] for p in points]
        for before, after in pairwise(times):
            if after <= before:
                msg = f"trace {name!r}: time {after} does not increase after {before}"
                raise ConfigError(msg)
        first_duration = times[1] - times[0]
        starts = [times[0] - first_duration, *times[:-1]]
        cumulative = [0.0]
        for (t, rate), start in zip(points, starts, strict=True):
            cumulative.append(cumulative[-1] + rate * (t - start))
        if not math.isfinite(cumulative[-1]) or not math.isfinite(starts[0]):
            msg = f"trace {name!r}: rates x durations overflow a float; check the units"
            raise ConfigError(msg)
        return cls(
            name, tuple(times), tuple(p[1] for p in points), tuple(starts), tuple(cumulative)
        )

    @property
    def end(self) -> float:
        """Time of the last sample."""
        return self.times[-1]

    def samples(self) -> list[BandwidthSample]:
        """The trace as contract samples, oldest first."""
        return [
            BandwidthSample(t=t, bits_per_second=rate, duration_s=t - start)
            for t, rate, start in zip(self.times, self.rates, self.starts, strict=True)
        ]

    def integral(self, t: float) -> float:
        """Bits sent from the start of the first sample up to ``t`` (clamped to the trace)."""
        if t <= self.starts[0]:
            return 0.0
        if t >= self.times[-1]:
            return self.cumulative[-1]
        i = bisect_right(self.times, t)
        return self.cumulative[i] + self.rates[i] * (t - self.starts[i])

    def mean(self, start: float, end: float) -> float:
        """Mean rate (bit/s) over ``(start, end]``; both must lie inside the trace."""
        return (self.integral(end) - self.integral(start)) / (end - start)


def read_trace(path: Path) -> Trace:
    """Read a trace file in the shared format (time in s, throughput in Mbit/s).

    Every sample needs a finite time, strictly greater than the previous sample's, and a
    finite, non-negative throughput; a line that breaks this is a ConfigError naming
    ``FILE:LINE`` and what to fix.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"cannot read trace {path}: {exc.strerror}; pass a readable file"
        raise ConfigError(msg) from exc
    except UnicodeDecodeError as exc:
        msg = (
            f"{path} is not a text trace (byte {exc.start} is not UTF-8 text); a trace holds "
            "one 'time_seconds<TAB>Mbit_per_s' line per sample (time in s, throughput in Mbit/s)"
        )
        raise ConfigError(msg) from exc
    points: list[tuple[float, float]] = []
    previous = 0
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        try:
            t, mbps = float(fields[0]), float(fields[1])
        except (ValueError, IndexError) as exc:
            msg = f"{path}:{number}: expected 'time_seconds<TAB>Mbit_per_s', got {line!r}"
            raise ConfigError(msg) from exc
        if not math.isfinite(t):
            msg = f"{path}:{number}: time {fields[0]!r} is not a finite number of seconds"
            raise ConfigError(msg)
        if not math.isfinite(mbps * BITS_PER_MEGABIT):
            msg = f"{path}:{number}: throughput {fields[1]!r} is not a finite number of Mbit/s"
            raise ConfigError(msg)
        if mbps < 0:
            msg = f"{path}:{number}: negative throughput {mbps}"
            raise ConfigError(msg)
        if points and t <= points[-1][0]:
            msg = (
                f"{path}:{number}: time {t:g} s does not increase after {points[-1][0]:g} s "
                f"(line {previous}); sample times must grow strictly, one sample a line"
            )
            raise ConfigError(msg)
        previous = number
        points.append((t, mbps * BITS_PER_MEGABIT))
    if len(points) < 2:
        msg = (
            f"{path} holds {len(points)} sample(s); a trace needs at least 2 lines of "
            "'time_seconds<TAB>Mbit_per_s' (time in s, throughput in Mbit/s)"
        )
        raise ConfigError(msg)
    return Trace.from_points(path.name, points)


def trace_family(name: str) -> str:
    """``fcc`` for the FCC traces (``trace_*``), ``norway`` for the HSDPA logs, else ``other``."""
    if name.startswith("trace_"):
        return "fcc"
    if name.endswith(".log"):
        return "norway"
    return "other"


def split_of(files: list[Path]) -> dict[Path, str]:
    """Assign each trace file to a split, by file, deterministically.

    Within each family the files are ordered by the SHA-256 of their name; ranks 0, 5, 10, ...
    are held out, ranks 1, 6, 11, ... calibrate the lower bound, the rest train. A file's split
    depends only on its name and its family's membership, never on its content or order on disk.
    """
    families: dict[str, list[Path]] = {}
    for path in files:
        families.setdefault(trace_family(path.name), []).append(path)
    split: dict[Path, str] = {}
    for members in families.values():
        ranked = sorted(members, key=lambda p: hashlib.sha256(p.name.encode()).hexdigest())
        for rank, path in enumerate(ranked):
            split[path] = {0: "heldout", 1: "calibration"}.get(rank % 5, "train")
    return split


def trace_files(directory: Path) -> list[Path]:
    """Trace files of a directory (everything but README/LICENSE files), sorted by name."""
    if not directory.is_dir():
        msg = f"trace directory {directory} does not exist; point to a folder of trace files"
        raise ConfigError(msg)
    skip = ("README", "LICENSE")
    return sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith(skip))


def files_in_split(directory: Path, which: str) -> list[Path]:
    """The trace files of ``directory`` that belong to split ``which`` (see :func:`split_of`)."""
    if which not in SPLITS:
        msg = f"unknown split {which!r}; use one of {', '.join(SPLITS)}"
        raise ConfigError(msg)
    return sorted(p for p, s in split_of(trace_files(directory)).items() if s == which)
