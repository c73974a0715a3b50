"""Retries for cloud API calls: exponential backoff with full jitter, on by default.

Cloud drivers wrap every provider call in :func:`retry_async` with a predicate that says which
provider errors are worth retrying (throttling, 5xx, timeouts). The policy comes from the
driver's ``retry`` setting, so users tune it in the config rather than in code. A driver may
also say how long the provider asked it to wait (``Retry-After``): the wait before the next
attempt is then at least that long, up to :data:`MAX_RETRY_AFTER` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

from novacron_sdk.errors import ConfigError

T = TypeVar("T")
log = logging.getLogger(__name__)

RetryPredicate = Callable[[BaseException], bool]
"""Says whether an exception is transient (worth another attempt)."""

RetryAfter = Callable[[BaseException], float | None]
"""Seconds the provider asked to wait before retrying (its ``Retry-After``), or None."""

MAX_RETRY_AFTER = 60.0
"""The longest wait a ``Retry-After`` can impose on one retry, in seconds."""


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP date.

    None when there is no header or it cannot be read; 0 for a date in the past.
    """
    if not value or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    """How many times to try a call and how long to wait in between.

    The wait before retry ``n`` (0-based) is drawn uniformly from
    ``[0, min(max_delay, base_delay * 2**n)]`` ("full jitter"), which spreads the retries of
    many clients that were throttled at the same moment.
    """

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 20.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            msg = f"retry.attempts must be at least 1 (1 disables retries), got {self.attempts}"
            raise ConfigError(msg)
        if self.base_delay < 0 or self.max_delay < 0:
            msg = (
                f"retry.base_delay and retry.max_delay must be >= 0, got {self.base_delay} "
                f"and {self.max_delay}"
            )
            raise ConfigError(msg)

    @classmethod
    def from_settings(cls, value: Any) -> RetryPolicy:
        """Build a policy from a driver's ``retry`` setting.

        ``None`` or ``True`` gives the defaults, ``False`` disables retries, and a mapping may
        set ``attempts``, ``base_delay`` and ``max_delay``.
        """
        if value is None or value is True:
            return cls()
        if value is False:
            return cls(attempts=1)
        if not isinstance(value, Mapping):
            msg = f"the retry setting must be true, false or a mapping, got {value!r}"
            raise ConfigError(msg)
        unknown = set(value) - {"attempts", "base_delay", "max_delay"}
        if unknown:
            msg = (
                f"unknown retry setting(s) {sorted(unknown)}; "
                "use attempts, base_delay and max_delay"
            )
            raise ConfigError(msg)
        try:
            return cls(
                attempts=int(value.get("attempts", cls.attempts)),
                base_delay=float(value.get("base_delay", cls.base_delay)),
                max_delay=float(value.get("max_delay", cls.max_delay)),
            )
        except (TypeError, ValueError) as exc:
            msg = f"the retry setting {dict(value)!r} is invalid: {exc}"
            raise ConfigError(msg) from exc

    def delay(self, retry_number: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry ``retry_number`` (0 for the first retry)."""
        cap = min(self.max_delay, self.base_delay * (2.0**retry_number))
        return (rng or _RNG).uniform(0.0, cap)


_RNG = random.Random()  # jitter only: no cryptographic strength needed


async def retry_async(
    call: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    retryable: RetryPredicate,
    description: str = "call",
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    rng: random.Random | None = None,
    retry_after: RetryAfter | None = None,
) -> T:
    """Await ``call()`` until it succeeds, retrying errors that ``retryable`` accepts.

    A non-retryable error, or the last attempt's error, propagates unchanged. The wait before
    a retry is the policy's, or longer when ``retry_after`` finds a ``Retry-After`` in the
    error: ``max(policy delay, min(retry_after, MAX_RETRY_AFTER))``. ``sleep`` and ``rng``
    exist so that tests can observe the waits without waiting.
    """
    retry_number = 0
    while True:
        try:
            return await call()
        except Exception as exc:
            if retry_number + 1 >= policy.attempts or not retryable(exc):
                raise
            wait = policy.delay(retry_number, rng)
            asked = retry_after(exc) if retry_after is not None else None
            if asked is not None:
                wait = max(wait, min(asked, MAX_RETRY_AFTER))
            log.info(
                "%s failed (%s: %s); retry %d of %d in %.2fs",
                description,
                type(exc).__name__,
                exc,
                retry_number + 1,
                policy.attempts - 1,
                wait,
            )
            retry_number += 1
            await sleep(wait)
