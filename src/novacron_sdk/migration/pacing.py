"""A token bucket that caps the migration's wire bandwidth (``max_bandwidth_bps``)."""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    """Allows ``rate_bps`` bits per second on average, with bursts up to ``burst_s`` worth."""

    def __init__(self, rate_bps: float, *, burst_s: float = 0.05) -> None:
        self.rate_bytes = rate_bps / 8
        self.capacity = max(self.rate_bytes * burst_s, 64 * 1024)
        self._tokens = self.capacity
        self._last = time.monotonic()

    async def consume(self, nbytes: int) -> None:
        """Wait until ``nbytes`` may be sent."""
        now = time.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate_bytes)
        self._last = now
        self._tokens -= nbytes
        if self._tokens < 0:
            await asyncio.sleep(-self._tokens / self.rate_bytes)
