"""Waiting for something to happen in a test, without timing it.

A test that sleeps a fixed time and then asserts that something happened fails on a loaded
machine (a CI runner with two cores, other tests' processes still exiting). Wait for the
condition instead, with a bound that only a hang reaches::

    from novacron_sdk.testing.waiting import eventually

    await eventually(lambda: 0 in transport.closed, "channel 0 is closed")
    await eventually(lambda: driver.is_running("vm1"), "vm1 runs")  # may return an awaitable

The bound (``within_s``, 20 s by default) is far above the fraction of a second these
conditions take on an idle machine; it exists so that a bug fails the test instead of hanging
it, never to assert how fast something is (speed is measured by ``benchmarks/``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

__all__ = ["WITHIN_S", "eventually", "running"]

T = TypeVar("T")

WITHIN_S = 20.0
"""The default bound of :func:`eventually`: a hang, not a slow machine."""


async def eventually(
    check: Callable[[], bool | Awaitable[bool]],
    what: str,
    *,
    within_s: float = WITHIN_S,
    every_s: float = 0.02,
) -> None:
    """Poll ``check`` (a function returning a bool or an awaitable of one) until it is true.

    Fails the test with ``"<what> did not happen within <within_s> s"`` when it is not.
    """
    deadline = time.monotonic() + within_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {within_s} s")
        await asyncio.sleep(every_s)


@contextlib.asynccontextmanager
async def running(
    work: Coroutine[Any, Any, T], *, within_s: float = 60.0
) -> AsyncIterator[asyncio.Task[T]]:
    """``work`` as a task for the block; on leaving it (also when the test fails half way) the
    task is cancelled and waited for, up to ``within_s``, so that its sockets are closed before
    the test's fixtures close what it uses::

        async with running(migrate(...)) as task:
            await eventually(lambda: engine.phase is Phase.PRECOPY, "pre-copy started")
            engine.cancel()
            with pytest.raises(MigrationAbortedError):
                await task
    """
    task = asyncio.create_task(work)
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), within_s)
