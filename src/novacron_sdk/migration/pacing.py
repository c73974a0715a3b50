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

    A window that opens a round, or follows one in which sends did not wait, reads high:
    the transport's and the kernel's send buffers fill during it (over an emulated 10 Mbit/s
    WAN link: 21 Mbit/s with TCP, 33-57 Mbit/s with DWCP on short rounds). A link-bound
    window that follows a link-bound one is *settled*: the buffers were already full when it
    opened, so what it took is what the link drained. An unsettled reading is used only until
    a settled one exists (skipping it made the codec's hint come a window later, and the
    first round sent more with the codec's defaults: 256 MiB sim VM over TCP, 20.2 MB and
    17.3 s instead of 15.2 MB and 13.1 s); after that, short rounds, which have no settled
    window of their own, keep the settled rate instead of a reading several times the link's.
    """

    def __init__(
        self, *, window_s: float = 1.0, bound_share: float = 0.5, min_bytes: int = 64 * 1024
    ) -> None:
        self.window_s = window_s
        self.bound_share = bound_share
        self.min_bytes = min_bytes
        self.last_bps: float | None = None
        self.settled_bps: float | None = None
        self._start: float | None = None
        self._bytes = 0
        self._waited = 0.0
        self._previous_bound = False  # the window before this one was link-bound
        self._round_reading: float | None = None  # this round's last link-bound reading
        self._round_settled = False

    def record(self, nbytes: int, waited_s: float, now: float | None = None) -> float | None:
        """Account one send of ``nbytes`` that waited ``waited_s`` for the link.

        Returns the link's rate in bits per second when this send closes a link-bound window
        (the window's own reading if it is settled or nothing settled was measured yet, else
        the last settled rate), else None. ``now`` is ``time.monotonic()`` unless given.
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
        settled = bound and self._previous_bound
        self._start, self._bytes, self._waited = now, 0, 0.0
        self._previous_bound = bound
        if estimate is None:
            return None
        self._round_reading = estimate
        self._round_settled = self._round_settled or settled
        if settled:
            self.settled_bps = estimate
        elif self.settled_bps is not None:
            estimate = self.settled_bps
        self.last_bps = estimate
        return estimate

    def round_done(self, goodput_bps: float, seconds: float) -> float | None:
        """A round ended, acknowledged by the peer after ``seconds`` at ``goodput_bps``.

        When the round had link-bound windows but none settled (sends waited for the link only
        now and then: a codec that slowed down to the link's pace, buffers that never stayed
        full) and it lasted at least two windows, its goodput, which includes draining the
        buffers, settles the rate if it is the lower. Returns the settled rate when the round
        had a link-bound window, else None.
        """
        reading, settled = self._round_reading, self._round_settled
        self._round_reading, self._round_settled = None, False
        if reading is None:
            return None
        if not settled and seconds >= 2 * self.window_s and goodput_bps > 0:
            self.settled_bps = min(reading, goodput_bps)
            self.last_bps = self.settled_bps
        return self.settled_bps if self.settled_bps is not None else reading

    def pause(self) -> None:
        """Sends stopped for a while (between rounds): the next window starts afresh, and the
        buffers drain: it will not be settled."""
        self._start, self._bytes, self._waited = None, 0, 0.0
        self._previous_bound = False
