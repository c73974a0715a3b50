"""Pacing: the token bucket that caps wire bandwidth and the meter of the link's rate.

The meter and the bucket run on a synthetic clock here (their arithmetic); the engine tests
below them run real migrations over the real TCP transport on loopback, paced by the real
token bucket.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from novacron_sdk.encoding.interface import PageBatch, PageEncoder
from novacron_sdk.migration.inprocess import migrate_between
from novacron_sdk.migration.models import MigrationSettings
from novacron_sdk.migration.pacing import LinkMeter, TokenBucket
from novacron_sdk.migration.planner import plan_migration
from novacron_sdk.models import VMSpec
from novacron_sdk.plugin.manager import build_plugin_manager
from novacron_sdk.testing.codec import ForwardingEncoder, WrappingCodec
from novacron_sdk.transport.interface import Endpoint


def test_link_bound_window_gives_the_link_rate() -> None:
    """Sends that wait most of a window: the bytes over the window are the link's rate."""
    meter = LinkMeter(window_s=1.0)
    estimates = []
    now = 100.0
    for _ in range(25):  # 125 kB every 0.1 s, each send waiting 0.08 s: 10 Mbit/s
        now += 0.1
        estimates.append(meter.record(125_000, 0.08, now=now))
    found = [e for e in estimates if e is not None]
    assert len(found) == 2
    assert found == pytest.approx([10e6, 10e6], rel=0.1)
    assert meter.last_bps == pytest.approx(10e6, rel=0.1)


def test_a_settled_rate_outlasts_the_high_first_window_of_later_rounds() -> None:
    """The window that opens a round also fills the send buffers and reads high; once a
    window that followed a link-bound one (buffers full at its start) measured the link,
    later rounds' opening windows give that settled rate instead."""
    meter = LinkMeter(window_s=1.0)

    def window(start: float, nbytes: int) -> float | None:
        """Ten sends over one second from ``start`` (the first waited 0.1 s, the others 0.06 s:
        0.64 s in all), ``nbytes`` in all; the last closes the window."""
        result = None
        for step in range(1, 11):
            now = start + step / 10
            waited = now - start if step == 1 else 0.06
            result = meter.record(nbytes // 10, waited, now=now)
            assert step == 10 or result is None
        return result

    # Round 1: 5 MB in the first second (4 MB went into buffers), then 1.25 MB a second.
    assert window(10.0, 5_000_000) == pytest.approx(40e6, rel=0.15)  # nothing settled yet
    assert meter.settled_bps is None
    assert window(11.0, 1_250_000) == pytest.approx(10e6, rel=0.01)
    assert meter.settled_bps == pytest.approx(10e6, rel=0.01)
    meter.pause()
    # Round 2, short: its only window fills the buffers again.
    assert window(20.0, 5_000_000) == pytest.approx(10e6, rel=0.01)
    assert meter.last_bps == pytest.approx(10e6, rel=0.01)
    # A longer round measures again: the link got faster.
    assert window(21.0, 2_500_000) == pytest.approx(20e6, rel=0.01)
    assert meter.settled_bps == pytest.approx(20e6, rel=0.01)


def test_a_long_round_without_a_settled_window_is_settled_by_its_goodput() -> None:
    """A round whose sends waited only now and then (a codec slowed to the link's pace) has
    no settled window; when it lasted two windows or more, its acknowledged goodput, which
    includes draining the buffers, settles the rate. A short round leaves the rate alone."""
    meter = LinkMeter(window_s=1.0)
    now = 50.0
    readings = []
    for second in range(6):  # link-bound only every other second: never settled
        waited = 0.08 if second % 2 == 0 else 0.0
        for _ in range(10):
            now += 0.1
            readings.append(meter.record(500_000, waited, now=now))
    assert meter.settled_bps is None
    assert [r for r in readings if r is not None] != []
    assert meter.round_done(9.5e6, 7.0) == pytest.approx(9.5e6)
    assert meter.settled_bps == pytest.approx(9.5e6)
    assert meter.last_bps == pytest.approx(9.5e6)
    # A round with no link-bound window says nothing; a short one keeps the settled rate.
    assert meter.round_done(3e6, 5.0) is None
    meter.pause()
    for _ in range(11):
        now += 0.1
        meter.record(500_000, 0.08, now=now)
    assert meter.round_done(2e6, 1.2) == pytest.approx(9.5e6)


def test_sends_that_never_wait_say_nothing_about_the_link() -> None:
    """The CPU set the pace (sends returned at once): no estimate, however many bytes."""
    meter = LinkMeter(window_s=1.0)
    now = 0.0
    for _ in range(50):
        now += 0.1
        assert meter.record(10_000_000, 0.001, now=now) is None
    assert meter.last_bps is None


def test_a_pause_starts_a_new_window() -> None:
    """Idle time between rounds is not link time: the window restarts after ``pause``."""
    meter = LinkMeter(window_s=1.0)
    assert meter.record(125_000, 0.1, now=10.0) is None
    meter.pause()
    # Ten seconds later: without the pause this send would close a 10 s window at 0.2 Mbit/s.
    assert meter.record(125_000, 0.1, now=20.0) is None
    estimate = None
    now = 20.0
    while estimate is None:
        now += 0.1
        estimate = meter.record(125_000, 0.1, now=now)
    assert estimate == pytest.approx(10e6, rel=0.1)


async def test_token_bucket_paces_to_its_rate() -> None:
    """The bucket lets 8 Mbit/s through on average, its 64 KiB burst aside: the waits it asks
    for add up to what the bytes beyond the burst take at 1 MB/s (on a clock it advances)."""
    clock = [100.0]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock[0] += seconds

    bucket = TokenBucket(8e6, clock=lambda: clock[0], sleep=sleep)
    for _ in range(40):
        await bucket.consume(10_000)  # 400 kB at 1 MB/s
    assert sum(waits) == pytest.approx((400_000 - 64 * 1024) / 1e6)
    assert len(waits) == 40 - 6  # the first six sends (60 kB) fit the burst and never wait


class _HintRecorder(ForwardingEncoder):
    """Records the hints the engine gives the real encoder, and after how many batches."""

    def __init__(self, inner: PageEncoder) -> None:
        super().__init__(inner)
        self.log: list[tuple[int, float]] = []
        self.batches = 0

    def encode(self, batch: PageBatch) -> bytes:
        self.batches += 1
        return self.inner.encode(batch)

    def set_bandwidth_hint(self, bits_per_second: float) -> None:
        self.log.append((self.batches, bits_per_second))
        super().set_bandwidth_hint(bits_per_second)


async def _migrate(drivers: Any, settings: MigrationSettings) -> tuple[Any, list[Any], int]:
    src, dst = drivers
    plugins = build_plugin_manager(autoload=False)
    idle = {"fill": "mixed", "workload": {"pattern": "idle"}}
    spec = VMSpec(name="vm1", memory_mib=16, extra=idle)
    vm = await src.create_vm(spec)
    await asyncio.sleep(0)
    plan = plan_migration(plugins, settings, Endpoint())
    encoders: list[_HintRecorder] = []

    def recorder(inner: PageEncoder) -> PageEncoder:
        encoders.append(_HintRecorder(inner))
        return encoders[-1]

    plan.codec = WrappingCodec(plan.codec, recorder)
    report = await migrate_between(src, dst, vm.id, plugins=plugins, settings=settings, plan=plan)
    first_round_batches = -(-report.rounds[0].pages // settings.batch_pages)
    (encoder,) = encoders
    return report, encoder.log, first_round_batches


async def test_first_round_is_encoded_for_the_link_it_crosses(drivers: Any) -> None:
    """On a paced link the codec gets the measured rate while the first round still runs."""
    settings = MigrationSettings(
        transport="tcp", codec="zlib", predictor="ewma", max_bandwidth_bps=8e6
    )
    report, log, first_round_batches = await _migrate(drivers, settings)
    assert log, "the encoder never got a bandwidth hint"
    batches_then, hint = log[0]
    assert batches_then < first_round_batches  # during the first round, not after it
    assert hint == pytest.approx(8e6, rel=0.25)
    assert report.link_bps == pytest.approx(8e6, rel=0.25)


async def test_unpaced_loopback_leaves_the_link_unmeasured(drivers: Any) -> None:
    """On loopback the CPU sets the pace: no link rate is reported or hinted mid-round."""
    settings = MigrationSettings(transport="tcp", codec="zlib", predictor="ewma")
    report, log, first_round_batches = await _migrate(drivers, settings)
    assert report.link_bps is None
    assert all(batches >= first_round_batches for batches, _ in log)
