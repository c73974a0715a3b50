"""The WAN emulator: its link model on its own, then delay, rate, loss and traces for real."""

from __future__ import annotations

import shutil
import statistics
import subprocess
from pathlib import Path

import pytest

from novacron_sdk.errors import ConfigError
from novacron_sdk.testing.wan import (
    LinkProfile,
    LinkScheduler,
    Trace,
    WanEmulator,
    skip_unless_available,
    symmetric,
)

TRACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "bandwidth" / "pensieve-train"
CELLULAR = TRACES / "bus.ljansbakken-oslo-report.2010-09-28_1407CEST.log"


# -- the model, no root needed ---------------------------------------------------------------


def test_trace_integrates_piecewise_constant_rates() -> None:
    trace = Trace(((0.0, 1e6), (1.0, 0.0), (2.0, 2e6)), period_s=3.0)
    assert trace.bits_between(0.5, 2.5) == pytest.approx(1.5e6)
    assert trace.finish_time(0.5, 1e6) == pytest.approx(2.25)  # waits out the zero-rate step
    assert trace.finish_time(2.9, 3e6) == pytest.approx(5.9)  # wraps around the period
    assert trace.rate_at(4.5) == 0.0


def test_real_trace_loads() -> None:
    if not CELLULAR.exists():
        pytest.skip(f"trace data missing: {CELLULAR}")
    trace = Trace.load(CELLULAR, scale=2.0, max_seconds=30)
    assert trace.steps[0][0] == 0.0
    assert 25 <= len(trace.steps) <= 31
    raw = float(CELLULAR.read_text().split()[1])
    assert trace.steps[0][1] == pytest.approx(raw * 2e6)


def test_bad_traces_are_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.log"
    bad.write_text("0.0 1.0\nnot numbers\n")
    with pytest.raises(ConfigError, match=r"bad\.log:2"):
        Trace.load(bad)
    with pytest.raises(ConfigError):
        Trace(((0.0, 0.0), (1.0, 0.0)), period_s=2.0)


def test_scheduler_serializes_at_the_rate_and_drops_at_the_tail() -> None:
    link = LinkScheduler(LinkProfile(rate_bps=8e6, delay_s=0.01, queue_bytes=3000))
    due = [link.admit(0.0, 1000) for _ in range(5)]
    assert due[:3] == [pytest.approx(0.011), pytest.approx(0.012), pytest.approx(0.013)]
    assert due[3:] == [None, None]
    assert link.dropped_queue == 2


def test_scheduler_loss_is_close_to_the_configured_rate() -> None:
    link = LinkScheduler(LinkProfile(loss=0.05), seed=3)
    delivered = sum(link.admit(float(i), 100) is not None for i in range(20_000))
    assert 0.04 < 1 - delivered / 20_000 < 0.06


def test_default_queue_is_one_bdp_but_at_least_64_packets() -> None:
    assert LinkProfile(100e6, 0.05).queue_limit == 1_250_000
    assert LinkProfile(1e6, 0.001).queue_limit == 64 * 1500


# -- the real thing: namespaces, TUN, forwarders --------------------------------------------


@pytest.fixture
def wan_required() -> None:
    skip_unless_available()
    if shutil.which("ping") is None:
        pytest.skip("the emulator tests measure with ping (apt-get install iputils-ping)")


def _namespaces() -> str:
    return subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False
    ).stdout


@pytest.mark.usefixtures("wan_required")
def test_delay_is_within_ten_percent() -> None:
    with WanEmulator(*symmetric(None, 0.030)) as emu:
        rtts = emu.ping("a", count=30, interval_s=0.01)
    assert len(rtts) == 30
    # CPU stalls of a loaded 2-vCPU machine only ever add delay, to any share of the pings
    # (the forwarders and ping wait for a CPU): the fastest ping is what the link itself does.
    assert min(rtts) == pytest.approx(0.030, rel=0.10)


@pytest.mark.usefixtures("wan_required")
def test_rate_is_within_ten_percent() -> None:
    rate = 20e6
    with WanEmulator(*symmetric(rate, 0.010, queue_bytes=200_000)) as emu:
        goodput, cc = emu.tcp_goodput("a", seconds=2.5, cc="bbr")
        stats = emu.stats("a")
    assert cc == "bbr"
    # TCP payload is 1448 of every 1500 bytes on the wire: goodput tops out at 96.5%, and never
    # exceeds the link. Below that, TCP's own processes waiting for a CPU (a loaded machine)
    # lower it; the link's accuracy is the wire rate below, measured while it was busy.
    assert 0.5 * rate <= goodput <= rate
    busy = [b for b in stats.buckets if b][2:-2]
    wire_rate = 8 * statistics.median(busy) / WanEmulator.bucket_s
    assert wire_rate == pytest.approx(rate, rel=0.10)


@pytest.mark.usefixtures("wan_required")
def test_loss_is_roughly_as_configured() -> None:
    with WanEmulator(*symmetric(None, 0.002, loss=0.10), seed=1) as emu:
        rtts = emu.ping("a", count=300, interval_s=0.003)
        stats = emu.stats("a")
    # Each direction loses 10%: about 19% of pings get no reply.
    assert 0.08 < 1 - len(rtts) / 300 < 0.32
    assert 0.04 < stats.loss_rate < 0.18


@pytest.mark.slow
@pytest.mark.usefixtures("wan_required")
def test_rate_follows_a_real_cellular_trace() -> None:
    if not CELLULAR.exists():
        pytest.skip(f"trace data missing: {CELLULAR}")
    trace = Trace.load(CELLULAR, scale=4.0, max_seconds=60)
    up = LinkProfile(delay_s=0.02, trace=trace, queue_bytes=150_000)
    with WanEmulator(up, LinkProfile(delay_s=0.02)) as emu:
        emu.tcp_goodput("a", seconds=5.0, cc="bbr")
        stats = emu.stats("a")
    step = WanEmulator.bucket_s
    busy = [i for i, b in enumerate(stats.buckets) if b]
    first, last = busy[0] + 5, busy[-1] - 2  # skip slow start and the tail
    delivered = 8 * sum(stats.buckets[first:last])
    capacity = trace.bits_between(first * step, last * step)
    assert delivered == pytest.approx(capacity, rel=0.15)
    for second in range(first, last - 10, 10):  # never faster than the trace allows
        got = 8 * sum(stats.buckets[second : second + 10])
        assert got <= 1.1 * trace.bits_between(second * step, (second + 10) * step) + 8 * 3000


@pytest.mark.usefixtures("wan_required")
def test_hosts_reach_only_each_other_and_everything_is_removed() -> None:
    with WanEmulator(LinkProfile()) as emu:
        names = set(emu.namespaces.values())
        assert names <= set(_namespaces().split())
        routes = emu.run("a", ["ip", "-4", "route"], capture_output=True, text=True).stdout
        assert routes.split()[0] == "198.18.0.0/24"
        assert len(routes.strip().splitlines()) == 1
        # `ip route get` only looks the route up: no packet is sent.
        probe = emu.run("a", ["ip", "route", "get", "192.0.2.1"], capture_output=True, text=True)
        assert probe.returncode != 0
        assert "unreachable" in probe.stderr
        assert emu.ping("a", count=2, interval_s=0.01)
    assert not names & set(_namespaces().split())


@pytest.mark.usefixtures("wan_required")
def test_teardown_happens_even_when_the_body_fails() -> None:
    names: set[str] = set()

    def fail_inside() -> None:
        with WanEmulator(LinkProfile()) as emu:
            names.update(emu.namespaces.values())
            emu.popen("b", ["sleep", "60"])
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    assert names
    assert not names & set(_namespaces().split())
