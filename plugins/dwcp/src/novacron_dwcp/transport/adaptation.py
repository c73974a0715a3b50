"""Stream-count adaptation: hill climbing on measured goodput within configured bounds.

Start with the mode's initial count. Probe upwards (half as many again) and keep the new
count only while goodput grows by more than ``gain`` per step, in two intervals in a row
(one could be noise); otherwise return to the last
good count and hold. Every other probe goes downwards instead, keeping the smaller count
when goodput does not drop by more than ``gain``: a stream that does not help costs CPU,
memory and fairness. After each failed probe the hold doubles (up to ``max_hold``) so a
settled channel stops churning connections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Phase = Literal["start", "probe_up", "confirm_up", "probe_down", "hold"]


@dataclass
class StreamCountController:
    """Decides the next stream count from one goodput sample per interval."""

    min_streams: int
    max_streams: int
    current: int
    gain: float = 0.08
    hold_intervals: int = 2
    max_hold: int = 16
    phase: Phase = "start"
    base_goodput: float = 0.0
    base_count: int = 0
    _hold_left: int = 0
    _hold: int = 0
    _next_probe_down: bool = False
    _confirm: float = 0.0
    history: list[tuple[int, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.current = self._clamp(self.current)
        self.base_count = self.current
        self._hold = self.hold_intervals

    def _clamp(self, n: int) -> int:
        return max(self.min_streams, min(self.max_streams, n))

    def step(self, goodput_bps: float) -> int:
        """Feed the goodput measured with ``current`` streams; returns the count to use next."""
        self.history.append((self.current, goodput_bps))
        if goodput_bps <= 0:
            return self.current  # idle: nothing to learn
        handler = {
            "start": self._on_start,
            "probe_up": self._on_probe_up,
            "confirm_up": self._on_confirm_up,
            "probe_down": self._on_probe_down,
            "hold": self._on_hold,
        }[self.phase]
        handler(goodput_bps)
        return self.current

    def _on_start(self, goodput: float) -> None:
        self._set_base(goodput)
        self._probe()

    def _on_probe_up(self, goodput: float) -> None:
        if goodput > self.base_goodput * (1 + self.gain):
            # One good interval can be noise (a neighbour's CPU burst ended): confirm.
            self.phase = "confirm_up"
            self._confirm = goodput
        else:
            self._revert()

    def _on_confirm_up(self, goodput: float) -> None:
        if goodput > self.base_goodput * (1 + self.gain):
            self._set_base(min(goodput, self._confirm))
            self._hold = self.hold_intervals
            self._probe_up()
        else:
            self._revert()

    def _on_probe_down(self, goodput: float) -> None:
        if goodput >= self.base_goodput * (1 - self.gain):
            # Fewer streams, same goodput: keep shrinking while that stays true.
            self._set_base(goodput)
            self._hold = self.hold_intervals
            self._next_probe_down = True
            self._hold_now()
        else:
            self._revert()

    def _on_hold(self, goodput: float) -> None:
        # Track the current level so the next probe compares against fresh conditions.
        self.base_goodput = 0.5 * self.base_goodput + 0.5 * goodput
        self._hold_left -= 1
        if self._hold_left <= 0:
            self._probe()

    def _set_base(self, goodput: float) -> None:
        self.base_goodput = goodput
        self.base_count = self.current

    def _probe(self) -> None:
        if self._next_probe_down and self.current > self.min_streams:
            self._next_probe_down = False
            self.phase = "probe_down"
            self.current = self._clamp(self.current - max(1, self.current // 4))
        elif self.current < self.max_streams:
            self._next_probe_down = True
            self._probe_up()
        else:
            self._next_probe_down = True
            self._hold_now()

    def _probe_up(self) -> None:
        if self.current >= self.max_streams:
            self._hold_now()
            return
        self.phase = "probe_up"
        self.current = self._clamp(self.current + max(1, self.current // 2))

    def _revert(self) -> None:
        self.current = self.base_count
        self._hold = min(self.max_hold, self._hold * 2)
        self._hold_now()

    def _hold_now(self) -> None:
        self.phase = "hold"
        self._hold_left = self._hold
