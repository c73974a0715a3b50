"""Tests of the cloud retry helper: backoff bounds, full jitter, predicates and settings."""

from __future__ import annotations

import random

import pytest

from novacron_sdk.clouds.retry import RetryPolicy, retry_async
from novacron_sdk.errors import ConfigError


class Throttled(Exception):
    """A transient error in these tests."""


class Flaky:
    """Fails ``failures`` times with ``error`` and then returns ``value``."""

    def __init__(self, failures: int, error: Exception, value: str = "ok") -> None:
        self.failures = failures
        self.error = error
        self.value = value
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return self.value


class Sleeps:
    """Records the waits instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def is_throttled(exc: BaseException) -> bool:
    return isinstance(exc, Throttled)


async def test_retries_transient_errors_until_success():
    flaky = Flaky(3, Throttled("slow down"))
    sleeps = Sleeps()
    policy = RetryPolicy(attempts=5, base_delay=1.0, max_delay=3.0)
    result = await retry_async(flaky, policy=policy, retryable=is_throttled, sleep=sleeps)
    assert result == "ok"
    assert flaky.calls == 4
    assert len(sleeps.waits) == 3
    caps = [1.0, 2.0, 3.0]  # base * 2**n, capped by max_delay
    assert all(0.0 <= wait <= cap for wait, cap in zip(sleeps.waits, caps, strict=True))


async def test_gives_up_after_the_last_attempt_with_the_original_error():
    error = Throttled("still throttled")
    flaky = Flaky(10, error)
    sleeps = Sleeps()
    with pytest.raises(Throttled) as caught:
        await retry_async(
            flaky, policy=RetryPolicy(attempts=3), retryable=is_throttled, sleep=sleeps
        )
    assert caught.value is error
    assert flaky.calls == 3
    assert len(sleeps.waits) == 2


async def test_non_retryable_errors_propagate_at_once():
    flaky = Flaky(1, ValueError("bad request"))
    sleeps = Sleeps()
    with pytest.raises(ValueError, match="bad request"):
        await retry_async(flaky, policy=RetryPolicy(), retryable=is_throttled, sleep=sleeps)
    assert flaky.calls == 1
    assert sleeps.waits == []


async def test_disabled_retries_make_one_attempt():
    flaky = Flaky(1, Throttled("x"))
    with pytest.raises(Throttled):
        await retry_async(
            flaky, policy=RetryPolicy.from_settings(False), retryable=is_throttled, sleep=Sleeps()
        )
    assert flaky.calls == 1


def test_full_jitter_spreads_over_the_whole_window():
    policy = RetryPolicy(base_delay=1.0, max_delay=100.0)
    rng = random.Random(7)
    waits = [policy.delay(4, rng) for _ in range(2000)]
    assert min(waits) >= 0.0
    assert max(waits) <= 16.0
    # Full jitter draws from [0, cap]: both ends of the window are reached, not just the top.
    assert min(waits) < 1.0
    assert max(waits) > 15.0


def test_delay_is_capped_by_max_delay():
    policy = RetryPolicy(base_delay=1.0, max_delay=2.5)
    rng = random.Random(1)
    assert max(policy.delay(30, rng) for _ in range(500)) <= 2.5


def test_policy_from_settings():
    assert RetryPolicy.from_settings(None) == RetryPolicy()
    assert RetryPolicy.from_settings(True) == RetryPolicy()
    assert RetryPolicy.from_settings({"attempts": "7", "base_delay": 0}) == RetryPolicy(
        attempts=7, base_delay=0.0
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"attempts": 0}, "at least 1"),
        ({"tries": 3}, "unknown retry setting"),
        ({"base_delay": -1}, ">= 0"),
        ({"attempts": "many"}, "invalid"),
        ("often", "true, false or a mapping"),
    ],
)
def test_bad_settings_raise_config_errors(value, message):
    with pytest.raises(ConfigError, match=message):
        RetryPolicy.from_settings(value)
