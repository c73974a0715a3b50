"""The link model of the WAN emulator: profiles, bandwidth traces and the packet schedule.

One direction of a link is a drop-tail queue in front of a serializer (fixed rate, or a rate
that follows a trace), followed by a fixed propagation delay; each packet is independently
lost with the configured probability before it enters the queue. Everything here is pure
computation on timestamps, so it is tested without namespaces or root.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from novacron_sdk.errors import ConfigError

MTU = 1500


@dataclass(frozen=True)
class Trace:
    """Link capacity over time: ``(start_s, bits_per_s)`` steps, repeated after ``period_s``."""

    steps: tuple[tuple[float, float], ...]
    period_s: float
    name: str = "trace"

    def __post_init__(self) -> None:
        if not self.steps or self.steps[0][0] != 0.0:
            msg = f"trace {self.name!r} must start at time 0"
            raise ConfigError(msg)
        if any(b[0] <= a[0] for a, b in itertools.pairwise(self.steps)):
            msg = f"trace {self.name!r}: times must increase"
            raise ConfigError(msg)
        if self.period_s <= self.steps[-1][0] or all(rate <= 0 for _, rate in self.steps):
            msg = f"trace {self.name!r} needs a period after its last step and some capacity"
            raise ConfigError(msg)

    @classmethod
    def load(
        cls, path: str | Path, *, scale: float = 1.0, max_seconds: float | None = None
    ) -> Trace:
        """Read a Pensieve/Mahimahi-style file: ``time_s<TAB>Mbit/s`` per line.

        ``scale`` multiplies every rate; ``max_seconds`` keeps only the beginning.
        """
        path = Path(path)
        samples: list[tuple[float, float]] = []
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            msg = f"cannot read bandwidth trace {path}: {exc}"
            raise ConfigError(msg) from exc
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                time_s, mbps = (float(x) for x in line.split()[:2])
            except ValueError as exc:
                msg = f"{path}:{number}: expected 'seconds Mbit/s', got {line!r}"
                raise ConfigError(msg) from exc
            if (
                max_seconds is not None
                and time_s - (samples[0][0] if samples else 0) >= max_seconds
            ):
                break
            samples.append((time_s, mbps * 1e6 * scale))
        if len(samples) < 2:
            msg = f"bandwidth trace {path} has fewer than two samples"
            raise ConfigError(msg)
        t0 = samples[0][0]
        steps = tuple((t - t0, rate) for t, rate in samples)
        # Each sample holds until the next; the last one for the median step length.
        gaps = sorted(b[0] - a[0] for a, b in itertools.pairwise(steps))
        return cls(steps, steps[-1][0] + gaps[len(gaps) // 2], name=path.name)

    def _times(self) -> list[float]:
        times: list[float] | None = self.__dict__.get("_times_cache")
        if times is None:
            times = [t for t, _ in self.steps]
            object.__setattr__(self, "_times_cache", times)
        return times

    def rate_at(self, t: float) -> float:
        """Capacity in bit/s at time ``t`` (seconds since the emulator started)."""
        i = bisect.bisect_right(self._times(), t % self.period_s) - 1
        return self.steps[i][1]

    def bits_between(self, start: float, end: float) -> float:
        """Bits the link can carry from ``start`` to ``end``."""
        return self._walk(start, end=end, bits=None)[1]

    def finish_time(self, start: float, bits: float) -> float:
        """When ``bits`` starting at ``start`` have been serialized."""
        return self._walk(start, end=None, bits=bits)[0]

    def _walk(self, start: float, *, end: float | None, bits: float | None) -> tuple[float, float]:
        times = self._times()
        cycle, offset = divmod(start, self.period_s)
        i = bisect.bisect_right(times, offset) - 1
        t, carried = start, 0.0
        while True:
            step_end = cycle * self.period_s + (
                times[i + 1] if i + 1 < len(times) else self.period_s
            )
            rate = self.steps[i][1]
            limit = step_end if end is None else min(step_end, end)
            room = rate * (limit - t)
            if bits is not None and rate > 0 and carried + room >= bits:
                return t + (bits - carried) / rate, bits
            carried += room
            t = limit
            if end is not None and t >= end:
                return t, carried
            i += 1
            if i == len(times):
                i, cycle = 0, cycle + 1


@dataclass(frozen=True)
class LinkProfile:
    """One direction of an emulated link."""

    rate_bps: float | None = None
    """Serialization rate; None = unlimited (only delay and loss apply)."""
    delay_s: float = 0.0
    """One-way propagation delay."""
    loss: float = 0.0
    """Probability that a packet is dropped (independently, before the queue)."""
    queue_bytes: int | None = None
    """Drop-tail queue limit; None = max(64 packets, the BDP of rate x (2 x delay))."""
    trace: Trace | None = None
    """When set, the rate follows this trace (rate_bps is then ignored)."""

    def __post_init__(self) -> None:
        if self.rate_bps is not None and self.rate_bps <= 0:
            raise ConfigError("rate_bps must be positive (or None for unlimited)")
        if self.delay_s < 0 or not 0 <= self.loss < 1:
            raise ConfigError("delay_s must be >= 0 and loss in [0, 1)")

    @property
    def queue_limit(self) -> int:
        """The effective drop-tail limit in bytes."""
        if self.queue_bytes is not None:
            return self.queue_bytes
        rate = self.rate_bps or (self.trace and max(r for _, r in self.trace.steps)) or 0.0
        return max(64 * MTU, int(rate * 2 * self.delay_s / 8))

    def describe(self) -> str:
        """A short human label, e.g. ``100 Mbit/s, 10 ms, 0.5% loss``."""
        rate = (
            f"trace {self.trace.name}"
            if self.trace
            else (f"{self.rate_bps / 1e6:g} Mbit/s" if self.rate_bps else "unlimited")
        )
        return f"{rate}, {self.delay_s * 1e3:g} ms, {self.loss * 100:g}% loss"


def symmetric(
    rate_bps: float | None,
    rtt_s: float,
    loss: float = 0.0,
    *,
    queue_bytes: int | None = None,
    trace: Trace | None = None,
) -> tuple[LinkProfile, LinkProfile]:
    """Both directions of a link with ``rtt_s`` round trip; loss applies to each direction."""
    one = LinkProfile(rate_bps, rtt_s / 2, loss, queue_bytes, trace)
    return one, one


@dataclass
class LinkScheduler:
    """Decides, per arriving packet, to drop it or when to deliver it."""

    profile: LinkProfile
    seed: int | None = None
    link_free_at: float = 0.0
    dropped_loss: int = 0
    dropped_queue: int = 0
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._queue_limit = self.profile.queue_limit

    def admit(self, now: float, size: int) -> float | None:
        """Delivery time of a ``size``-byte packet arriving at ``now``; None when dropped."""
        profile = self.profile
        if profile.loss and self._rng.random() < profile.loss:
            self.dropped_loss += 1
            return None
        trace, rate = profile.trace, profile.rate_bps
        free = self.link_free_at
        if trace is None:
            if rate is None:
                return now + profile.delay_s
            backlog_bits = (free - now) * rate
        else:
            backlog_bits = trace.bits_between(now, free) if free > now else 0.0
        if backlog_bits > 0 and backlog_bits / 8 + size > self._queue_limit:
            self.dropped_queue += 1
            return None
        start = max(now, free)
        bits = 8 * size
        finish = start + bits / rate if trace is None and rate else 0.0
        if trace is not None:
            finish = trace.finish_time(start, bits)
        self.link_free_at = finish
        return finish + profile.delay_s


def load_traces(folder: str | Path, pattern: str = "*") -> Sequence[Path]:
    """Trace files in ``folder`` matching ``pattern``, sorted (README and LICENSE skipped)."""
    skip = {"README.md", "LICENSE"}
    return sorted(p for p in Path(folder).glob(pattern) if p.is_file() and p.name not in skip)
