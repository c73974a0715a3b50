"""Hybrid logical clocks (Kulkarni et al., 2014): timestamps that follow wall time but never
go backwards and always order a receive after the send it saw.

A timestamp is ``(wall_ms, logical, node)``; comparing tuples gives a total order in which a
tie on ``(wall_ms, logical)`` is broken by node id, so two regions never tie.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import NamedTuple

log = logging.getLogger(__name__)


class Timestamp(NamedTuple):
    """One HLC reading: wall-clock milliseconds, a logical counter, and the node that made it."""

    wall_ms: int
    logical: int
    node: str

    def encode(self) -> list[int | str]:
        """JSON form: ``[wall_ms, logical, node]``."""
        return [self.wall_ms, self.logical, self.node]

    @classmethod
    def decode(cls, raw: list[int | str] | tuple[int | str, ...]) -> Timestamp:
        """Inverse of :meth:`encode`."""
        wall, logical, node = raw
        return cls(int(wall), int(logical), str(node))


ZERO = Timestamp(0, 0, "")


def wall_ms() -> int:
    """Milliseconds since the epoch, from the system clock."""
    return time.time_ns() // 1_000_000


class HybridLogicalClock:
    """The clock of one node; ``now()`` for local events, ``observe()`` for received ones.

    ``max_drift_ms`` bounds how far ahead of our wall clock a remote timestamp may be before
    we log it: such a peer has a broken clock, and its writes will win LWW races for that long.
    """

    def __init__(
        self, node: str, *, clock: Callable[[], int] = wall_ms, max_drift_ms: int = 60_000
    ) -> None:
        self.node = node
        self.clock = clock
        self.max_drift_ms = max_drift_ms
        self.last = Timestamp(0, 0, node)

    def now(self) -> Timestamp:
        """A timestamp greater than every one this clock made or observed."""
        physical = self.clock()
        if physical > self.last.wall_ms:
            self.last = Timestamp(physical, 0, self.node)
        else:
            self.last = Timestamp(self.last.wall_ms, self.last.logical + 1, self.node)
        return self.last

    def observe(self, remote: Timestamp) -> None:
        """Move past ``remote`` so that later local timestamps order after it."""
        physical = self.clock()
        if remote.wall_ms - physical > self.max_drift_ms:
            log.warning(
                "timestamp from %s is %d ms ahead of our clock; check its clock",
                remote.node,
                remote.wall_ms - physical,
            )
        wall = max(physical, self.last.wall_ms, remote.wall_ms)
        if wall == self.last.wall_ms == remote.wall_ms:
            logical = max(self.last.logical, remote.logical) + 1
        elif wall == self.last.wall_ms:
            logical = self.last.logical + 1
        elif wall == remote.wall_ms:
            logical = remote.logical + 1
        else:
            logical = 0
        self.last = Timestamp(wall, logical, self.node)
