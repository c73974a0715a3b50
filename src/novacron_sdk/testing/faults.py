"""Fault injectors on the destination of a live migration, for hand-over tests.

The hand-over's hard cases are races: a cancel, a shutdown or a lost connection that lands
while the destination checks the pages or resumes the VM. A test makes such a race certain
by holding that step of the destination's migration sink until it has done its part::

    from novacron_sdk.testing.faults import hold_sink_step

    checking, go_on = asyncio.Event(), asyncio.Event()
    hold_sink_step(dst_driver, "page_digests", reached=checking, release=go_on)
    ...  # start the migration, wait for ``checking``, cancel it, then ``go_on.set()``

Only the driver object the test holds is changed (its ``open_migration_sink`` is wrapped);
every sink it opens afterwards holds the step, and the real step runs once released.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from novacron_sdk.hypervisors.interface import HypervisorDriver, MigrationSink

__all__ = ["hold_sink_step"]


def hold_sink_step(
    driver: HypervisorDriver,
    step: str,
    *,
    reached: asyncio.Event,
    release: asyncio.Event | None = None,
    delay_s: float = 0.0,
    alter: Callable[[Any], Any] | None = None,
) -> None:
    """Make ``step`` (a method of the sinks ``driver`` opens: ``page_digests``, ``activate``,
    ...) set ``reached`` when called, then wait for ``release`` (when given) and ``delay_s``,
    then run the real step; ``alter`` may replace its result (``alter(result)``, e.g. a
    digest made wrong on purpose)."""
    open_sink = driver.open_migration_sink

    async def holding_sink(info: Any) -> MigrationSink:
        sink = await open_sink(info)
        real = getattr(sink, step)

        async def held(*args: Any, **kwargs: Any) -> Any:
            reached.set()
            if release is not None:
                await release.wait()
            if delay_s:
                await asyncio.sleep(delay_s)
            result = await real(*args, **kwargs)
            return alter(result) if alter is not None else result

        setattr(sink, step, held)
        return sink

    driver.open_migration_sink = holding_sink  # type: ignore[method-assign]
