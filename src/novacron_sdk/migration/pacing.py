"""Pacing: a token bucket that caps the migration's wire bandwidth (``max_bandwidth_bps``), and
a meter of the link's rate from how long sends wait for it (the codec's bandwidth hint while
a round is still running, so the first round, which carries most of the bytes, is encoded for
the link it actually crosses)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class TokenBucket:
    """Allows ``rate_bps`` bits per second on average, with bursts up to ``burst_s`` worth.

    ``clock`` and ``sleep`` are ``time.monotonic`` and ``asyncio.sleep`` unless given (tests
    run the bucket on a clock of their own).
    """

    def __init__(
        self,
        rate_bps: float,
        *,
        burst_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.rate_bytes = rate_bps / 8
        self.capacity = max(self.rate_bytes * burst_s, 64 * 1024)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.capacity
        self._last = clock()

    async def consume(self, nbytes: int) -> None:
        """Wait until ``nbytes`` may be sent."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate_bytes)
        self._last = now
        self._tokens -= nbytes
        if self._tokens < 0:
            await self._sleep(-self._tokens / self.rate_bytes)


class LinkMeter:
    """The link's rate, measured from how long sends wait for it (backpressure).

    A send that returns at once says nothing about the link (the CPU, not the link, sets the
    pace); a window of at least ``window_s`` in which sends waited for at least
    ``bound_share`` of the time is link-bound: the link was busy all along, so the bytes sent
    over the window's length are the rate it drains at. Waiting includes the migration's own
    bandwidth cap (``max_bandwidth_bps``), which is then the link as far as the codec can tell.

    The first link-bound window of a round reads high while the transport's and the kernel's
    send buffers still fill (over an emulated 10 Mbit/s WAN link: 21 Mbit/s with TCP, 33-57
    Mbit/s with DWCP's 64 MiB window on short rounds). It is used anyway: skipping it made the
    hint come a window later, and the round sent more with the codec's defaults (256 MiB sim
    VM over TCP: 20.2 MB and 17.3 s instead of 15.2 MB and 13.1 s); later link-bound windows
    correct it.
    """

    def __init__(
        self, *, window_s: float = 1.0, bound_share: float = 0.5, min_bytes: int = 64 * 1024
    ) -> None:
        self.window_s = window_s
        self.bound_share = bound_share
        self.min_bytes = min_bytes
        self.last_bps: float | None = None
        self._start: float | None = None
        self._bytes = 0
        self._waited = 0.0

    def record(self, nbytes: int, waited_s: float, now: float | None = None) -> float | None:
        """Account one send of ``nbytes`` that waited ``waited_s`` for the link.

        Returns the link's rate in bits per second when this send closes a link-bound window,
        else None. ``now`` is ``time.monotonic()`` unless given (tests).
        """
        now = time.monotonic() if now is None else now
        if self._start is None:
            self._start = now - waited_s
        self._bytes += nbytes
        self._waited += waited_s
        elapsed = now - self._start
        if elapsed < self.window_s:
            return None
        bound = self._waited >= self.bound_share * elapsed and self._bytes >= self.min_bytes
        estimate = 8 * self._bytes / elapsed if bound else None
        self._start, self._bytes, self._waited = now, 0, 0.0
        if estimate is not None:
            self.last_bps = estimate
        return estimate

    def pause(self) -> None:
        """Sends stopped for a while (between rounds): the next window starts afresh."""
        self._start, self._bytes, self._waited = None, 0, 0.0
