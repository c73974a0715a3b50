"""The migration engine in one process: two real sim drivers, the real TCP transport on loopback.

Nothing is mocked. The recording wrappers below only observe (they pass every call through),
and the faulty codec is a deliberate fault injector, said where it is used.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from novacron_sdk.builtin.sim.driver import SimDriver
from novacron_sdk.encoding.interface import PageBatch
from novacron_sdk.errors import (
    MigrationAbortedError,
    MigrationError,
    NovaCronError,
    VerificationError,
)
from novacron_sdk.hypervisors.interface import MigrationSource
from novacron_sdk.migration.display import report_rows
from novacron_sdk.migration.inprocess import migrate_between
from novacron_sdk.migration.models import MigrationEvent, MigrationPhase, MigrationSettings
from novacron_sdk.migration.planner import builtin_should_switch_over, plan_migration
from novacron_sdk.models import VMSpec, VMState
from novacron_sdk.plugin import hookimpl
from novacron_sdk.plugin.manager import build_plugin_manager
from novacron_sdk.prediction.interface import BandwidthEstimate
from novacron_sdk.testing.codec import ForwardingEncoder, WrappingCodec
from novacron_sdk.testing.faults import hold_sink_step
from novacron_sdk.testing.waiting import eventually, running
from novacron_sdk.transport.interface import Endpoint

MIB = 1024 * 1024


@pytest.fixture
def plugins():
    return build_plugin_manager(autoload=False)


def busy_spec(name: str = "vm1", *, memory_mib: int = 64, **workload: Any) -> VMSpec:
    work = {"pattern": "hot-set", "rate_mbps": 20, "hot_fraction": 0.05, "seed": 7} | workload
    return VMSpec(name=name, memory_mib=memory_mib, extra={"fill": "mixed", "workload": work})


async def wait_for_writes(workload: Any) -> None:
    """The workload thread writes in bursts; wait until it has written more pages."""
    start = workload.pages_written
    await eventually(lambda: workload.pages_written > start, "the workload writes (the guest runs)")


def tcp_settings(**kwargs: Any) -> MigrationSettings:
    return MigrationSettings(transport="tcp", codec="zlib", predictor="ewma", **kwargs)


async def test_migration_completes_and_memory_matches(plugins, drivers) -> None:
    """The VM moves while its workload dirties pages; memory at pause equals memory at resume."""
    src, dst = drivers
    vm = await src.create_vm(busy_spec())
    source_workload = await src.ex_workload(vm.id)
    await eventually(lambda: source_workload.pages_written > 0, "the guest writes at the source")
    written_before = source_workload.pages_written
    digests: dict[str, str] = {}
    open_source, open_sink = src.open_migration_source, dst.open_migration_sink

    async def observed_source(vm_id: str) -> MigrationSource:
        source = await open_source(vm_id)
        real = source.device_state

        async def device_state() -> bytes:
            # Called while paused, after the final dirty set was collected and sent.
            digests["source"] = await src.ex_memory_digest(vm_id)
            return await real()

        source.device_state = device_state  # type: ignore[method-assign]
        return source

    async def observed_sink(info: Any) -> Any:
        sink = await open_sink(info)
        real = sink.activate

        async def activate() -> Any:
            (incoming,) = [v for v in await dst.list_vms() if v.name == "vm1"]
            digests["destination"] = await dst.ex_memory_digest(incoming.id)
            return await real()

        sink.activate = activate  # type: ignore[method-assign]
        return sink

    src.open_migration_source = observed_source  # type: ignore[method-assign]
    dst.open_migration_sink = observed_sink  # type: ignore[method-assign]
    events: list[MigrationEvent] = []
    report = await migrate_between(
        src, dst, vm.id, plugins=plugins, settings=tcp_settings(), on_event=events.append
    )
    assert report.outcome is MigrationPhase.COMPLETED
    assert digests["source"] == digests["destination"]
    moved = await dst.get_vm("vm1")
    assert moved.state is VMState.RUNNING
    assert [v for v in await src.list_vms() if v.name == "vm1"] == []
    # The guest wrote during pre-copy, so pages dirtied after their first copy were re-sent.
    assert report.pages_sent > report.memory_bytes // report.page_size
    assert report.verification["mismatches"] == 0
    kinds = {e.kind for e in events}
    assert {"planned", "round_started", "switchover", "verified", "completed"} <= kinds
    # The workload moved with the VM and keeps writing at the destination.
    workload = await dst.ex_workload(moved.id)
    assert workload.pages_written >= written_before
    await wait_for_writes(workload)


async def test_memory_identical_at_switchover(plugins, drivers) -> None:
    """With verify=full, digests of all memory at both ends are compared during the pause."""
    src, dst = drivers
    vm = await src.create_vm(busy_spec(rate_mbps=10))
    report = await migrate_between(
        src, dst, vm.id, plugins=plugins, settings=tcp_settings(verify="full")
    )
    assert report.verification["sink_pages_checked"] == 64 * MIB // 4096
    assert report.verification["mismatches"] == 0


async def test_idle_vm_memory_identical_after_move(plugins, drivers) -> None:
    src, dst = drivers
    vm = await src.create_vm(busy_spec(pattern="idle"))
    before = await src.ex_memory_digest(vm.id)
    await migrate_between(src, dst, vm.id, plugins=plugins, settings=tcp_settings())
    moved = await dst.get_vm("vm1")
    assert await dst.ex_memory_digest(moved.id) == before


async def test_non_converging_workload_aborts_and_keeps_source(plugins, drivers) -> None:
    """A workload dirtying far more than fits the limit, with throttling off, aborts cleanly."""
    src, dst = drivers
    vm = await src.create_vm(busy_spec(pattern="uniform", rate_mbps=400, memory_mib=64))
    settings = tcp_settings(
        downtime_limit_ms=1,
        on_stall="abort",
        stall_rounds=2,
        max_rounds=6,
        max_bandwidth_bps=200e6,
    )
    with pytest.raises(MigrationAbortedError, match="did not converge"):
        await migrate_between(src, dst, vm.id, plugins=plugins, settings=settings)
    assert (await src.get_vm(vm.id)).state is VMState.RUNNING
    assert await dst.list_vms() == []
    workload = await src.ex_workload(vm.id)
    assert workload.throttle_fraction == 0.0
    await wait_for_writes(workload)  # the guest still runs


async def test_stalled_workload_is_throttled(plugins, drivers) -> None:
    src, dst = drivers
    vm = await src.create_vm(busy_spec(pattern="uniform", rate_mbps=300, memory_mib=64))
    events: list[MigrationEvent] = []
    settings = tcp_settings(
        downtime_limit_ms=30,
        on_stall="throttle",
        stall_rounds=1,
        max_rounds=40,
        throttle_initial=0.5,
        throttle_increment=0.2,
        max_bandwidth_bps=400e6,
    )
    report = await migrate_between(
        src, dst, vm.id, plugins=plugins, settings=settings, on_event=events.append
    )
    assert report.max_throttle >= 0.5
    assert any(e.kind == "throttled" for e in events)


async def test_cancel_rolls_back(plugins, drivers) -> None:
    src, dst = drivers
    vm = await src.create_vm(busy_spec(pattern="idle"))
    before = await src.ex_memory_digest(vm.id)
    sending = asyncio.Event()

    def on_event(event: MigrationEvent) -> None:
        if event.kind == "progress":
            sending.set()

    migration = migrate_between(
        src,
        dst,
        vm.id,
        plugins=plugins,
        settings=tcp_settings(max_bandwidth_bps=40e6),
        on_event=on_event,
    )
    async with running(migration) as task:
        await asyncio.wait_for(sending.wait(), 30)
        task.cancel()  # the engine rolls back on cancellation too
        with pytest.raises(asyncio.CancelledError):
            await task
    assert (await src.get_vm(vm.id)).state is VMState.RUNNING
    assert await src.ex_memory_digest(vm.id) == before
    assert await dst.list_vms() == []


class _CorruptingEncoder(ForwardingEncoder):
    """Fault injector: flips one byte of one page after the source digested it."""

    batches = 0

    def encode(self, batch: PageBatch) -> bytes:
        self.batches += 1
        if self.batches == 3:
            data = bytearray(batch.data)
            data[17] ^= 0xFF
            batch = PageBatch(batch.indices, bytes(data), batch.page_size)
            # The digest was taken of the true data; only the wire content is wrong.
        return self.inner.encode(batch)


async def test_wrong_memory_never_resumes(plugins, drivers) -> None:
    """A page corrupted between digest and wire is caught by verification before resume."""
    src, dst = drivers
    vm = await src.create_vm(busy_spec(pattern="idle"))
    settings = tcp_settings()
    plan = plan_migration(plugins, settings, Endpoint())
    plan.codec = WrappingCodec(plan.codec, _CorruptingEncoder)
    with pytest.raises(VerificationError, match="mismatching pages"):
        await migrate_between(src, dst, vm.id, plugins=plugins, settings=settings, plan=plan)
    assert (await src.get_vm(vm.id)).state is VMState.RUNNING
    assert await dst.list_vms() == []


async def test_unknown_codec_is_a_clear_error(plugins, drivers) -> None:
    src, dst = drivers
    vm = await src.create_vm(busy_spec(pattern="idle"))
    with pytest.raises(Exception, match="no codec named 'nope'; known:"):
        await migrate_between(
            src,
            dst,
            vm.id,
            plugins=plugins,
            settings=tcp_settings().model_copy(update={"codec": "nope"}),
        )
    assert (await src.get_vm(vm.id)).state is VMState.RUNNING


async def test_destination_without_capacity_leaves_source_running(plugins) -> None:
    src = SimDriver({"host_name": "src"})
    dst = SimDriver({"host_name": "dst", "memory_mib": 32})
    try:
        vm = await src.create_vm(busy_spec(pattern="idle"))
        with pytest.raises(Exception, match=r"(?i)capacity|memory"):
            await migrate_between(src, dst, vm.id, plugins=plugins, settings=tcp_settings())
        assert (await src.get_vm(vm.id)).state is VMState.RUNNING
    finally:
        await src.close()
        await dst.close()


@pytest.mark.parametrize(
    ("remaining", "lower_bps", "limit_ms", "expected"),
    [
        (0, None, 300, True),
        (10 * MIB, None, 300, False),
        (100 * 1024, None, 300, True),
        (1 * MIB, 100e6, 300, True),  # 84 ms at 100 Mbit/s
        (10 * MIB, 100e6, 300, False),  # 839 ms
        (10 * MIB, 1e9, 300, True),  # 84 ms at 1 Gbit/s
    ],
)
def test_builtin_switchover_rule(remaining, lower_bps, limit_ms, expected) -> None:
    estimate = None
    if lower_bps is not None:
        estimate = BandwidthEstimate(
            horizon_s=1,
            mean_bps=lower_bps * 1.2,
            lower_bps=lower_bps,
            coverage=0.9,
            predictor="t",
            samples=3,
        )
    settings = MigrationSettings(downtime_limit_ms=limit_ms)
    assert builtin_should_switch_over(remaining, estimate, settings) is expected


@pytest.mark.parametrize(
    ("rtt_s", "expected"),
    [
        (None, True),  # 84 ms + 20 ms
        (0.1, True),  # + 100 ms: 204 ms
        (0.2, False),  # + 200 ms: 304 ms
    ],
)
def test_builtin_switchover_rule_counts_the_round_trip(rtt_s, expected) -> None:
    """The hand-over waits for one round trip (VERIFY out, VERIFIED back): it is downtime."""
    estimate = BandwidthEstimate(
        horizon_s=1, mean_bps=120e6, lower_bps=100e6, coverage=0.9, predictor="t", samples=3
    )
    settings = MigrationSettings(downtime_limit_ms=300)
    assert builtin_should_switch_over(1 * MIB, estimate, settings, rtt_s) is expected


def test_switchover_hook_overrides_builtin_rule(plugins) -> None:
    class AlwaysWait:
        @staticmethod
        def novacron_should_switch_over(
            remaining_bytes: int, estimate: object, settings: object
        ) -> bool:
            return False

    from novacron_sdk.migration.planner import should_switch_over
    from novacron_sdk.plugin import hookimpl

    AlwaysWait.novacron_should_switch_over = hookimpl(  # type: ignore[attr-defined]
        AlwaysWait.novacron_should_switch_over
    )
    manager = build_plugin_manager(autoload=False, plugins=[("always-wait", AlwaysWait())])
    assert should_switch_over(plugins, 0, None, MigrationSettings()) is True
    assert should_switch_over(manager, 0, None, MigrationSettings()) is False


async def test_cancel_after_commit_completes_the_hand_over(plugins, drivers) -> None:
    """Once VERIFY is sent the VM moves even if the caller cancels: it never runs twice."""
    src, dst = drivers
    vm = await src.create_vm(busy_spec(pattern="idle"))
    activating, cancelled = asyncio.Event(), asyncio.Event()
    # The destination resumes only once the cancel below was issued: it lands while the
    # destination resumes, however slow the machine.
    hold_sink_step(dst, "activate", reached=activating, release=cancelled)
    committed = asyncio.Event()

    def on_event(event: MigrationEvent) -> None:
        if event.kind == "verified":
            committed.set()

    migration = migrate_between(
        src, dst, vm.id, plugins=plugins, settings=tcp_settings(), on_event=on_event
    )
    async with running(migration) as task:
        try:
            await asyncio.wait_for(committed.wait(), 30)
            await asyncio.wait_for(activating.wait(), 30)
            task.cancel()
            await asyncio.sleep(0.1)  # the cancel reaches the engine while the destination waits
        finally:
            cancelled.set()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert (await dst.get_vm("vm1")).state is VMState.RUNNING
    assert [v for v in await src.list_vms() if v.name == "vm1"] == []


async def test_cancel_while_the_destination_verifies_completes_the_hand_over(
    plugins, drivers
) -> None:
    """The destination resumes the VM as soon as its check passes (protocol 2): a cancel that
    lands while it checks cannot roll the source back, or the VM would run twice."""
    src, dst = drivers
    vm = await src.create_vm(busy_spec(pattern="idle"))
    checking, cancelled = asyncio.Event(), asyncio.Event()
    # checking: VERIFY has arrived (the source sent it); the check goes on once the cancel
    # below was issued.
    hold_sink_step(dst, "page_digests", reached=checking, release=cancelled)
    migration = migrate_between(src, dst, vm.id, plugins=plugins, settings=tcp_settings())
    async with running(migration) as task:
        try:
            await asyncio.wait_for(checking.wait(), 30)
            task.cancel()
            await asyncio.sleep(0.1)  # the cancel reaches the engine while the destination checks
        finally:
            cancelled.set()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert (await dst.get_vm("vm1")).state is VMState.RUNNING
    assert [v for v in await src.list_vms() if v.name == "vm1"] == []


class _Recorder:
    """Records what the engine asks the switch-over hook; waits the first ``wait`` times."""

    def __init__(self, wait: int) -> None:
        self.calls: list[tuple[int, float | None]] = []
        self.wait = wait

    @hookimpl
    def novacron_should_switch_over(
        self, remaining_bytes: int, estimate: object, settings: object, rtt_s: float | None
    ) -> bool | None:
        self.calls.append((remaining_bytes, rtt_s))
        return False if len(self.calls) <= self.wait else None


async def test_switchover_rule_gets_full_size_after_round_one_and_the_round_trip(
    drivers,
) -> None:
    """After the first round (every page: its ratio is mostly zero and cold pages) the
    remaining pages count at full size; after a round of written pages, at that round's
    ratio. Every call gets the round trip measured at the handshake."""
    src, dst = drivers
    vm = await src.create_vm(busy_spec())
    recorder = _Recorder(wait=2)  # two more rounds: their page counts are the pending sets
    plugins = build_plugin_manager(autoload=False, plugins=[("recorder", recorder)])
    report = await migrate_between(src, dst, vm.id, plugins=plugins, settings=tcp_settings())
    assert len(report.rounds) >= 3
    assert report.rtt_ms is not None
    assert 0 < report.rtt_ms < 60_000  # a duration in ms (loopback: well under one)
    assert [rtt for _, rtt in recorder.calls] == pytest.approx(
        [report.rtt_ms / 1000] * len(recorder.calls)
    )
    second, third = report.rounds[1], report.rounds[2]
    assert recorder.calls[0][0] == second.pages * report.page_size
    ratio = second.wire_bytes / (second.pages * report.page_size)
    assert ratio < 1  # zlib on the guest's written pages
    assert recorder.calls[1][0] == int(third.pages * report.page_size * max(ratio, 0.01))


async def test_report_says_where_the_downtime_went(plugins, drivers) -> None:
    """The switch-over's timings are in order and end at the downtime; its pages complete the
    pages sent."""
    src, dst = drivers
    vm = await src.create_vm(busy_spec())
    report = await migrate_between(src, dst, vm.id, plugins=plugins, settings=tcp_settings())
    done = report.switchover
    assert done is not None
    assert 0 < done.sent_ms <= done.verified_ms <= done.activated_ms == report.downtime_ms
    assert sum(r.pages for r in report.rounds) + done.pages == report.pages_sent
    assert sum(r.wire_bytes for r in report.rounds) + done.wire_bytes <= report.bytes_on_wire
    rows = dict(report_rows(report))  # what `novacron migrate` and the demo print
    assert rows["round trip (handshake)"] == f"{report.rtt_ms:.1f} ms"
    assert rows["pause: sent / verified / running"] == (
        f"{done.sent_ms:.0f} / {done.verified_ms:.0f} / {done.activated_ms:.0f} ms"
        f" ({done.pages} pages, {done.wire_bytes / MIB:.2f} MiB)"
    )


def _refusing_sink(driver: SimDriver) -> None:
    """Fault injector: the destination's hypervisor refuses to resume the VM."""
    open_sink = driver.open_migration_sink

    async def refusing(info: Any) -> Any:
        sink = await open_sink(info)

        async def activate() -> Any:
            msg = "the hypervisor refused to resume the VM"
            raise NovaCronError(msg)

        sink.activate = activate  # type: ignore[method-assign]
        return sink

    driver.open_migration_sink = refusing  # type: ignore[method-assign]


async def test_lost_answer_asks_the_destination_again_until_it_can_tell(
    plugins, drivers, monkeypatch
) -> None:
    """The destination fails to resume (a deliberate fault) after the source sent VERIFY. Its
    agent first cannot tell (the receiver is still finishing), then says it does not run the
    VM: the source asks again instead of staying paused for good, and rolls back. The check
    stands in for the agent's HTTP query."""
    from novacron_sdk.migration import engine as engine_module

    monkeypatch.setattr(engine_module, "DESTINATION_CHECK_INTERVAL_S", 0.01)
    src, dst = drivers
    vm = await src.create_vm(busy_spec(pattern="idle"))
    _refusing_sink(dst)
    answers: list[bool | None] = []

    async def destination_runs() -> bool | None:
        answers.append(None if len(answers) < 2 else False)
        return answers[-1]

    with pytest.raises(MigrationError, match="reports it does not run the VM; rolled back"):
        await migrate_between(
            src, dst, vm.id, plugins=plugins, settings=tcp_settings(),
            check_destination=destination_runs,
        )  # fmt: skip
    assert answers == [None, None, False]
    assert (await src.get_vm(vm.id)).state is VMState.RUNNING
    assert await dst.list_vms() == []


async def test_in_process_migration_knows_whether_the_destination_runs(plugins, drivers) -> None:
    """In one process the receiver's state answers a lost hand-over: a destination that
    failed to resume is known not to run the VM, so the source resumes it (it used to stay
    paused, as when nobody can be asked)."""
    src, dst = drivers
    vm = await src.create_vm(busy_spec(pattern="idle"))
    _refusing_sink(dst)
    with pytest.raises(MigrationError, match="rolled back to the source"):
        await migrate_between(src, dst, vm.id, plugins=plugins, settings=tcp_settings())
    assert (await src.get_vm(vm.id)).state is VMState.RUNNING


class _EightStreams:
    """A planner plugin that always asks for eight streams."""

    @hookimpl
    def novacron_choose_stream_count(
        self, estimate: object, rtt_s: float | None, settings: object
    ) -> int:
        return 8


def test_streams_beyond_what_the_transport_carries_are_refused_or_capped() -> None:
    """A ``streams`` setting the transport cannot honour is an error that says what to do
    (the single-stream TCP transport used to ignore it); a plugin's larger stream count is
    capped to what the transport carries."""
    from novacron_sdk.errors import ConfigError

    plugins = build_plugin_manager(autoload=False)
    expected = r"streams=2: the 'tcp' transport carries at most 1 stream\(s\) per channel"
    with pytest.raises(ConfigError, match=expected):
        plan_migration(plugins, tcp_settings(streams=2), Endpoint())
    assert plan_migration(plugins, tcp_settings(streams=1), Endpoint()).streams == 1
    asking = build_plugin_manager(autoload=False, plugins=[("eight", _EightStreams())])
    assert plan_migration(asking, tcp_settings(), Endpoint()).streams == 1
