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
