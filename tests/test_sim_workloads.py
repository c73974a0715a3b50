"""Workload models: deterministic stepping, patterns, throttle, pause, state transfer, traces."""

from __future__ import annotations

import itertools
import time
import zlib

import pytest
from pydantic import ValidationError

from novacron_sdk.builtin.sim.memory import GuestMemory
from novacron_sdk.builtin.sim.workloads import (
    Workload,
    WorkloadSpec,
    generate_trace,
    load_trace,
)
from novacron_sdk.errors import DriverError

MIB = 1024 * 1024


@pytest.fixture
def memory():
    mem = GuestMemory(64 * MIB)
    yield mem
    mem.close()


def pages_per_second(spec: WorkloadSpec, memory: GuestMemory) -> float:
    return spec.rate_mbps * 1e6 / memory.page_size


def wait_until(condition, patience_s=20.0):
    """Poll ``condition`` until it holds; False after ``patience_s`` (a hang, not a slow
    machine)."""
    deadline = time.monotonic() + patience_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_step_writes_at_the_configured_rate(memory):
    spec = WorkloadSpec(pattern="uniform", rate_mbps=4)
    workload = Workload(memory, spec)
    memory.start_tracking()
    memory.collect_dirty()
    written = workload.step(1.0)
    assert written == int(pages_per_second(spec, memory))
    assert workload.pages_written == written
    assert set(memory.collect_dirty()) == set(workload.last_indices)


def test_throttle_scales_the_writes(memory):
    spec = WorkloadSpec(pattern="uniform", rate_mbps=8)
    full = Workload(memory, spec).step(1.0)
    throttled = Workload(memory, spec)
    throttled.throttle(0.75)
    assert abs(throttled.step(1.0) - full / 4) <= 1
    throttled.throttle(0.99)
    assert abs(throttled.step(1.0) - full / 100) <= 1
    for bad in (-0.1, 1.0):
        with pytest.raises(DriverError, match="out of range"):
            throttled.throttle(bad)


def test_idle_writes_nothing(memory):
    workload = Workload(memory, WorkloadSpec(pattern="idle"))
    assert workload.step(10.0) == 0
    assert workload.pages_written == 0


def test_hot_set_stays_in_its_window(memory):
    spec = WorkloadSpec(pattern="hot-set", rate_mbps=40, hot_fraction=0.05, seed=2)
    workload = Workload(memory, spec)
    workload.step(1.0)
    hot_count = int(memory.page_count * 0.05)
    touched = set(workload.last_indices)
    assert len(touched) <= hot_count
    ordered = sorted(touched)
    # The window may wrap around the end of memory: its span is memory minus the largest gap.
    gaps = [b - a for a, b in itertools.pairwise(ordered)]
    gaps.append(ordered[0] + memory.page_count - ordered[-1])
    assert memory.page_count - max(gaps) + 1 <= hot_count
    spread = Workload(memory, WorkloadSpec(pattern="uniform", rate_mbps=40))
    spread.step(1.0)
    assert len(set(spread.last_indices)) > hot_count


def test_sequential_scans_in_order(memory):
    workload = Workload(memory, WorkloadSpec(pattern="sequential", rate_mbps=4))
    workload.step(0.5)
    first = workload.last_indices
    assert first == list(range(len(first)))
    workload.step(0.5)
    assert workload.last_indices[0] == len(first)


def test_entropy_controls_compressibility(memory):
    def ratio(entropy):
        workload = Workload(memory, WorkloadSpec(pattern="sequential", entropy=entropy))
        workload.step(0.1)
        data = memory.read_pages(workload.last_indices)
        return len(zlib.compress(data)) / len(data)

    assert ratio(0.0) < ratio(0.5) < ratio(1.0)


def test_state_transfer_continues_identically(memory):
    spec = WorkloadSpec(pattern="hot-set", rate_mbps=20, seed=11)
    original = Workload(memory, spec)
    original.step(0.3)
    copy = GuestMemory(64 * MIB)
    try:
        copy.write_pages(range(copy.page_count), memory.read_pages(range(memory.page_count)))
        moved = Workload.from_state(copy, spec, original.state())
        assert moved.pages_written == original.pages_written
        original.step(0.5)
        moved.step(0.5)
        assert moved.last_indices == original.last_indices
        assert copy.digest() == memory.digest()
    finally:
        copy.close()


def test_bad_state_is_rejected(memory):
    with pytest.raises(DriverError, match="invalid workload state"):
        Workload(memory, WorkloadSpec(), {"counter": 1})


def test_spec_validation_names_the_field():
    with pytest.raises(ValidationError, match="trace_path"):
        WorkloadSpec(pattern="trace")
    with pytest.raises(ValidationError, match="rate_mbps"):
        WorkloadSpec(rate_mbps=-1)
    with pytest.raises(ValidationError, match="pattern"):
        WorkloadSpec(pattern="random")


def test_background_thread_writes_and_pause_is_a_hard_stop(memory):
    workload = Workload(memory, WorkloadSpec(pattern="uniform", rate_mbps=40))
    workload.start()
    try:
        assert wait_until(lambda: workload.pages_written > 0)
        workload.pause()
        written, digest = workload.pages_written, memory.digest()
        assert workload.step(1.0) == 0
        time.sleep(0.05)
        assert (workload.pages_written, memory.digest()) == (written, digest)
        workload.resume()
        assert wait_until(lambda: workload.pages_written > written)
    finally:
        workload.stop()
    assert not workload.running
    stopped_at = workload.pages_written
    time.sleep(0.03)
    assert workload.pages_written == stopped_at


def test_generated_trace_replays_exactly(memory, tmp_path):
    trace = tmp_path / "hot.trace"
    spec = WorkloadSpec(pattern="hot-set", rate_mbps=4, seed=4)
    count = generate_trace(trace, spec, memory_mib=64, seconds=0.5)
    _times, pages = load_trace(trace, memory.page_count)
    assert count == len(pages) > 0
    replay = Workload(memory, WorkloadSpec(pattern="trace", trace_path=str(trace)))
    replay.step(0.25)
    replayed = list(replay.last_indices)
    replay.step(0.25)
    replayed += replay.last_indices
    assert replayed == pages
    replay.step(0.5)
    assert replay.last_indices == pages, "a looping trace starts over"
    once = Workload(memory, WorkloadSpec(pattern="trace", trace_path=str(trace), loop=False))
    once.step(0.5)
    assert once.step(5.0) == 0


def test_trace_errors_name_the_line(memory, tmp_path):
    trace = tmp_path / "bad.trace"
    trace.write_text("# comment\n0.1 3\n0.2 three\n")
    with pytest.raises(DriverError, match=r"bad.trace:3"):
        load_trace(trace, memory.page_count)
    trace.write_text(f"0.1 {memory.page_count}\n")
    with pytest.raises(DriverError, match="outside"):
        load_trace(trace, memory.page_count)
    trace.write_text("0.2 1\n0.1 2\n")
    with pytest.raises(DriverError, match="backwards"):
        load_trace(trace, memory.page_count)
    with pytest.raises(DriverError, match="cannot read"):
        load_trace(tmp_path / "none.trace", memory.page_count)
    with pytest.raises(DriverError, match="synthetic"):
        generate_trace(
            trace, WorkloadSpec(pattern="trace", trace_path="x"), memory_mib=1, seconds=1
        )
