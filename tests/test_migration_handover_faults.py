"""Faults around the hand-over: whatever happens, the VM runs on exactly one host.

Two real sim drivers and the real TCP transport on loopback. The faults are injected by a
channel wrapper that sits on one end of the real channel (it drops, delays or breaks frames
there: a deliberate fault injector), and, for the agent test, by a stand-in destination agent
that answers ``prepare`` without an endpoint. Each test failed before its fix.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from novacron_sdk.builtin.sim.driver import SimDriver
from novacron_sdk.errors import MigrationAbortedError, MigrationError, TransportError
from novacron_sdk.migration import engine as engine_module
from novacron_sdk.migration.engine import MigrationEngine
from novacron_sdk.migration.inprocess import migrate_between
from novacron_sdk.migration.models import MigrationEvent, MigrationPhase, MigrationSettings
from novacron_sdk.migration.planner import MigrationPlan, plan_migration
from novacron_sdk.migration.protocol import Msg
from novacron_sdk.models import VMSpec
from novacron_sdk.plugin.manager import NovaCronPluginManager, build_plugin_manager
from novacron_sdk.testing.faults import hold_sink_step
from novacron_sdk.testing.waiting import eventually, running
from novacron_sdk.transport.interface import Channel, ChannelStats, Endpoint

Hook = Callable[["_Faulty", bytes], Awaitable[bool]]
"""Called with every frame sent; True when it handled the frame itself (or dropped it)."""


class _Faulty(Channel):
    """One end of a real channel with a fault injector on its sends and receives."""

    def __init__(self, inner: Channel, on_send: Hook | None, on_recv: Hook | None) -> None:
        self.inner, self.on_send, self.on_recv = inner, on_send, on_recv

    async def send(self, frame: bytes) -> None:
        if self.on_send is None or not await self.on_send(self, frame):
            await self.inner.send(frame)

    async def recv(self) -> bytes:
        frame = await self.inner.recv()
        if self.on_recv is not None:
            await self.on_recv(self, frame)
        return frame

    async def drain(self) -> None:
        await self.inner.drain()

    async def close(self) -> None:
        await self.inner.close()

    def stats(self) -> ChannelStats:
        return self.inner.stats()


def _plan(
    *,
    destination_send: Hook | None = None,
    destination_recv: Hook | None = None,
    source_send: Hook | None = None,
    **settings: Any,
) -> tuple[NovaCronPluginManager, MigrationSettings, MigrationPlan]:
    """Plugins, TCP + zlib settings and a plan whose channels carry the fault injectors."""
    chosen = MigrationSettings(transport="tcp", codec="zlib", predictor="ewma", **settings)
    plugins = build_plugin_manager(autoload=False)
    plan = plan_migration(plugins, chosen, Endpoint())
    listen, connect = plan.transport.listen, plan.transport.connect

    async def faulty_listen(endpoint: Endpoint, handler: Any) -> Any:
        async def wrapped(channel: Channel) -> None:
            await handler(_Faulty(channel, destination_send, destination_recv))

        return await listen(endpoint, wrapped)

    async def faulty_connect(endpoint: Endpoint, *, timeout: float = 10.0) -> Channel:
        return _Faulty(await connect(endpoint, timeout=timeout), source_send, None)

    plan.transport.listen = faulty_listen  # type: ignore[method-assign]
    plan.transport.connect = faulty_connect  # type: ignore[method-assign]
    return plugins, chosen, plan


def _engines(monkeypatch: pytest.MonkeyPatch) -> list[MigrationEngine]:
    """Every engine made from now on in this test (to call its cancel())."""
    made: list[MigrationEngine] = []
    real_init = MigrationEngine.__init__

    def init(self: MigrationEngine, **kwargs: Any) -> None:
        real_init(self, **kwargs)
        made.append(self)

    monkeypatch.setattr(MigrationEngine, "__init__", init)
    return made


def _failing_source(driver: SimDriver, method: str, error: Exception) -> None:
    """Fault injector: the migration sources ``driver`` opens raise ``error`` in ``method``."""
    open_source = driver.open_migration_source

    async def opening(vm_id: str) -> Any:
        source = await open_source(vm_id)

        async def fail() -> None:
            raise error

        setattr(source, method, fail)
        return source

    driver.open_migration_source = opening  # type: ignore[method-assign]


def _is(frame: bytes, kind: Msg) -> bool:
    return frame[:1] == bytes([kind])


async def _where(src: SimDriver, dst: SimDriver) -> tuple[str, str]:
    """The VM's state on each host ("absent" where it is not)."""

    async def state(driver: SimDriver) -> str:
        found = [vm.state.value for vm in await driver.list_vms() if vm.name == "vm1"]
        return found[0] if found else "absent"

    return await state(src), await state(dst)


def _spec(memory_mib: int = 16) -> VMSpec:
    work = {"pattern": "hot-set", "rate_mbps": 20, "hot_fraction": 0.05, "seed": 7}
    return VMSpec(name="vm1", memory_mib=memory_mib, extra={"fill": "mixed", "workload": work})


def _slow_check(
    driver: SimDriver,
    started: asyncio.Event,
    *,
    corrupt: bool = False,
    release: asyncio.Event | None = None,
) -> None:
    """The destination's check of the pages takes 0.5 s, or lasts until ``release`` is set
    (VERIFY has arrived when ``started`` is set); with ``corrupt`` the sink reports a page
    stored wrongly (a deliberate fault)."""

    def corrupted(digests: Any) -> Any:
        digests[0] = bytes(16)
        return digests

    hold_sink_step(
        driver,
        "page_digests",
        reached=started,
        release=release,
        delay_s=0.5 if release is None else 0.0,
        alter=corrupted if corrupt else None,
    )


async def test_lost_activated_after_the_resume_never_runs_the_vm_twice(drivers) -> None:
    """The destination resumed the VM and the connection broke as it sent ACTIVATED: it used
    to report itself aborted, so the source rolled back and the VM ran on both hosts."""
    src, dst = drivers
    vm = await src.create_vm(_spec())

    async def break_on_activated(channel: _Faulty, frame: bytes) -> bool:
        if _is(frame, Msg.ACTIVATED):
            await channel.inner.close()
            msg = "connection reset while sending ACTIVATED"
            raise TransportError(msg)
        return False

    plugins, settings, plan = _plan(destination_send=break_on_activated)
    report = await migrate_between(src, dst, vm.id, plugins=plugins, settings=settings, plan=plan)
    assert report.outcome is MigrationPhase.COMPLETED
    assert await _where(src, dst) == ("absent", "running")


@pytest.mark.parametrize("corrupt", [False, True])
async def test_a_second_cancel_waits_for_the_hand_over_too(drivers, corrupt: bool) -> None:
    """Two cancels while the destination checks the pages: the hand-over still ends as it
    must (moved; or, when the check fails, rolled back). The second cancel used to abandon it
    half way: the source stayed paused and the destination discarded the VM."""
    src, dst = drivers
    vm = await src.create_vm(_spec())
    checking, cancelled = asyncio.Event(), asyncio.Event()
    # The check lasts until both cancels were issued, however slow the machine.
    _slow_check(dst, checking, corrupt=corrupt, release=cancelled)
    plugins, settings, plan = _plan()
    migration = migrate_between(src, dst, vm.id, plugins=plugins, settings=settings, plan=plan)
    async with running(migration) as task:
        try:
            await asyncio.wait_for(checking.wait(), 30)
            task.cancel()
            await asyncio.sleep(0.05)  # the first cancel reaches the engine
            task.cancel()
            await asyncio.sleep(0.05)  # and the second one
        finally:
            cancelled.set()
        with pytest.raises(asyncio.CancelledError):
            await task
    if corrupt:
        # The caller's cancellation propagates as such; the failed check still rolls back.
        assert await _where(src, dst) == ("running", "absent")
    else:
        assert await _where(src, dst) == ("absent", "running")


@pytest.mark.parametrize("queued", [True, False])
async def test_a_cancel_while_verify_is_sent_finishes_the_hand_over(drivers, queued: bool) -> None:
    """A cancel while VERIFY's send waits (written and draining, as TCP does; or waiting for
    window room first, as DWCP may): the VM moves, and the report says so. It used to leave
    the source paused with nobody reading the answers, and the VM ran nowhere."""
    src, dst = drivers
    vm = await src.create_vm(_spec())
    sending, cancelled = asyncio.Event(), asyncio.Event()

    async def slow_verify(channel: _Faulty, frame: bytes) -> bool:
        if not _is(frame, Msg.VERIFY):
            return False
        if queued:
            await channel.inner.send(frame)
        sending.set()
        await cancelled.wait()  # the send completes once the cancel below was issued
        if not queued:
            await channel.inner.send(frame)
        return True

    events: list[MigrationEvent] = []
    plugins, settings, plan = _plan(source_send=slow_verify)
    migration = migrate_between(
        src, dst, vm.id, plugins=plugins, settings=settings, plan=plan, on_event=events.append
    )
    async with running(migration) as task:
        try:
            await asyncio.wait_for(sending.wait(), 30)
            task.cancel()
            await asyncio.sleep(0.05)  # the cancel reaches the engine while VERIFY's send waits
        finally:
            cancelled.set()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await _where(src, dst) == ("absent", "running")
    assert events[-1].kind == "completed"
    assert "the VM moved" in events[-1].message


async def test_a_cancel_before_verify_rolls_back_even_while_paused(drivers, monkeypatch) -> None:
    """A cancel while the paused guest's last pages are sent rolls back (nothing is committed
    before VERIFY); it used to be ignored and the VM moved."""
    src, dst = drivers
    vm = await src.create_vm(_spec())
    paused, sending_device, cancelled = asyncio.Event(), asyncio.Event(), asyncio.Event()

    def on_event(event: MigrationEvent) -> None:
        if event.kind == "switchover":
            paused.set()

    async def slow_device_state(channel: _Faulty, frame: bytes) -> bool:
        if _is(frame, Msg.DEVICE):
            # A slow link: the send lasts until the cancel below was issued (it lands meanwhile).
            sending_device.set()
            await cancelled.wait()
        return False

    plugins, settings, plan = _plan(source_send=slow_device_state)
    engines = _engines(monkeypatch)
    migration = migrate_between(
        src, dst, vm.id, plugins=plugins, settings=settings, plan=plan, on_event=on_event
    )
    async with running(migration) as task:
        try:
            await asyncio.wait_for(sending_device.wait(), 30)
            assert paused.is_set()
            engines[0].cancel()
            await asyncio.sleep(0.05)  # the cancel reaches the engine while DEVICE is sent
        finally:
            cancelled.set()
        with pytest.raises(MigrationAbortedError, match="cancelled"):
            await task
    assert await _where(src, dst) == ("running", "absent")


@pytest.mark.parametrize("how", ["cancel", "timeout_s"])
async def test_a_silent_destination_does_not_hold_the_source(
    drivers, monkeypatch, how: str
) -> None:
    """The destination stops answering but keeps the connection open (a hung hypervisor, a
    partition without a reset). cancel() and timeout_s used to be checked only between
    batches, so the source stayed migrating for as long as the silence lasted."""
    src, dst = drivers
    # A small VM: its first round ends (and the destination falls silent) well within the
    # 3 s of timeout_s even on a slow machine; the silence is what timeout_s must cut short.
    vm = await src.create_vm(_spec(memory_mib=4))
    silent = asyncio.Event()

    async def stall(channel: _Faulty, frame: bytes) -> bool:
        if _is(frame, Msg.ROUND_END):
            silent.set()
            await asyncio.Event().wait()  # never answers
        return False

    plugins, settings, plan = _plan(
        destination_recv=stall, timeout_s=3 if how == "timeout_s" else 600
    )
    engines = _engines(monkeypatch)
    migration = migrate_between(src, dst, vm.id, plugins=plugins, settings=settings, plan=plan)
    async with running(migration) as task:
        await asyncio.wait_for(silent.wait(), 30)
        engine = engines[0]
        if how == "cancel":
            engine.cancel()
        # Within 20 s: far within the 600 s timeout of the cancel case.
        await eventually(
            lambda: engine.phase in (MigrationPhase.CANCELLED, MigrationPhase.ROLLED_BACK),
            "the source rolls back",
        )
        assert engine.phase is (
            MigrationPhase.CANCELLED if how == "cancel" else MigrationPhase.ROLLED_BACK
        )
        assert (await _where(src, dst))[0] == "running"
        task.cancel()  # the in-process helper also waits for its stalled receiver: no need
        with pytest.raises((asyncio.CancelledError, MigrationAbortedError)):
            await task
    assert await _where(src, dst) == ("running", "absent")
    assert engine.report is not None
    assert "cancelled" in (engine.report.error or "") or "timeout_s" in (engine.report.error or "")


async def test_a_broken_destination_check_means_unknown_not_no(drivers, monkeypatch) -> None:
    """ACTIVATED is lost after the resume and asking the destination fails with an error of
    an unexpected kind (a non-JSON answer): the source stays paused. It used to roll back
    while the destination ran the VM."""
    monkeypatch.setattr(engine_module, "DESTINATION_CHECK_S", 0.2)
    monkeypatch.setattr(engine_module, "DESTINATION_CHECK_INTERVAL_S", 0.05)
    src, dst = drivers
    vm = await src.create_vm(_spec())

    async def drop_activated(channel: _Faulty, frame: bytes) -> bool:
        if _is(frame, Msg.ACTIVATED):
            await channel.inner.close()
            return True
        return False

    async def broken_check() -> bool | None:
        msg = "Expecting value: line 1 column 1 (char 0)"
        raise ValueError(msg)

    plugins, settings, plan = _plan(destination_send=drop_activated)
    with pytest.raises(MigrationError, match="kept PAUSED"):
        await migrate_between(
            src, dst, vm.id, plugins=plugins, settings=settings, plan=plan,
            check_destination=broken_check,
        )  # fmt: skip
    assert await _where(src, dst) == ("migrating", "running")


async def test_a_failure_after_the_hand_over_does_not_resume_the_source(drivers) -> None:
    """The destination runs the VM, then releasing the source copy fails: the migration
    reports the move (and the leftover copy), never resumes the source."""
    src, dst = drivers
    vm = await src.create_vm(_spec())
    _failing_source(src, "release", TransportError("the hypervisor could not free the copy"))
    plugins, settings, plan = _plan()
    with pytest.raises(MigrationError, match="the VM moved, but the source copy was not released"):
        await migrate_between(src, dst, vm.id, plugins=plugins, settings=settings, plan=plan)
    source_state, destination_state = await _where(src, dst)
    assert destination_state == "running"
    assert source_state != "running"


async def test_an_unusable_prepare_answer_leaves_the_vm_running(monkeypatch) -> None:
    """The destination agent (a stand-in: another release, or a proxy) answers prepare
    without an endpoint. The source used to stay migrating for good, with a dead entry that
    refused every later migration of the VM."""
    from novacron_sdk.agent import service as service_module
    from novacron_sdk.agent.service import AgentService

    class _NoEndpoint:
        def __init__(self, url: str, **_: Any) -> None:
            self.url = url

        async def __aenter__(self) -> _NoEndpoint:
            return self

        async def __aexit__(self, *_: object) -> None:
            return None

        async def prepare_incoming(self, **_: Any) -> dict[str, Any]:
            return {"token": "abc", "host": "host-b"}

    monkeypatch.setattr(service_module, "AgentClient", _NoEndpoint)
    driver = SimDriver({"host_name": "a"})
    agent = AgentService(plugins=build_plugin_manager(autoload=False), driver=driver, name="a")
    try:
        vm = await driver.create_vm(_spec())
        for _ in range(2):  # and again: nothing is left behind that refuses it
            with pytest.raises(MigrationError, match=r"unusable answer to prepare.*'endpoint'"):
                await agent.start_migration(vm.id, "http://127.0.0.1:9", {"transport": "tcp"})
            assert (await driver.get_vm(vm.id)).state.value == "running"
        assert agent.outgoing == {}
    finally:
        await driver.close()


async def test_a_mismatch_in_a_vm_too_large_for_its_table_still_rolls_back(
    drivers, monkeypatch
) -> None:
    """After a mismatch the destination sends its digest table; one too large for a frame
    (VMs of 8 GiB and more; here the limit is lowered) used to fail the send, and the source
    learnt only that the hand-over broke. Now the table goes empty and the error says why."""
    from novacron_sdk.migration import receiver as receiver_module

    monkeypatch.setattr(receiver_module, "MAX_TABLE_BYTES", 1024)
    src, dst = drivers
    vm = await src.create_vm(_spec())
    _slow_check(dst, asyncio.Event(), corrupt=True)
    plugins, settings, plan = _plan()
    with pytest.raises(MigrationError, match=r"differs from the source .*table too large to send"):
        await migrate_between(src, dst, vm.id, plugins=plugins, settings=settings, plan=plan)
    assert await _where(src, dst) == ("running", "absent")


async def test_prepared_migrations_whose_source_never_connects_are_discarded(drivers) -> None:
    """The destination agent discards a prepared migration whose source never connected, and
    goes on doing so when discarding one fails (the first sink's abort raises here: a
    deliberate fault); the reaper used to die silently on such an error."""
    from novacron_sdk.agent.service import AgentService

    src, dst = drivers
    infos = []
    for name in ("vm1", "vm2"):
        vm = await src.create_vm(_spec().model_copy(update={"name": name}))
        infos.append((await src.open_migration_source(vm.id)).info())
    open_sink = dst.open_migration_sink
    opened: list[Any] = []

    async def sink_that_fails_once(source_info: Any) -> Any:
        sink = await open_sink(source_info)
        if not opened:

            async def abort() -> None:
                msg = "the hypervisor's cleanup crashed"
                raise RuntimeError(msg)

            sink.abort = abort  # type: ignore[method-assign]
        opened.append(sink)
        return sink

    dst.open_migration_sink = sink_that_fails_once  # type: ignore[method-assign]
    agent = AgentService(
        plugins=build_plugin_manager(autoload=False), driver=dst, name="b", incoming_timeout_s=0.2
    )
    passes = 0  # the reaper's passes (each begins by forgetting long-finished entries)
    forget_finished = agent._forget_finished

    def counting_pass(now: float) -> None:
        nonlocal passes
        passes += 1
        forget_finished(now)

    agent._forget_finished = counting_pass  # type: ignore[method-assign]
    await agent.start()
    try:
        for number, info in enumerate(infos):
            await agent.prepare_incoming(
                migration_id=f"m{number}", info=info, transport="tcp", codec="zlib", verify="pages"
            )
        await eventually(
            lambda: all(inc.receiver.state == "aborted" for inc in agent.incoming.values()),
            "both prepared migrations are discarded",
        )
        assert [inc.receiver.state for inc in agent.incoming.values()] == ["aborted"] * 2
        assert agent._reaper is not None
        assert not agent._reaper.done()
        after_the_abort = passes
        await eventually(
            lambda: passes > after_the_abort or agent._reaper.done(),  # type: ignore[union-attr]
            "another pass of the reaper after the failed abort",
        )
        assert not agent._reaper.done()  # still alive
        assert [vm.name for vm in await dst.list_vms()] == ["vm1"]  # vm2 discarded
    finally:
        if agent._reaper is not None:
            agent._reaper.cancel()
            await asyncio.gather(agent._reaper, return_exceptions=True)
        for listener in agent._listeners.values():
            await listener.close()


async def test_a_cancel_from_an_event_callback_rolls_back(drivers, monkeypatch) -> None:
    """cancel() from inside the run (an on_event callback) used to leave a cancel pending in
    the task that landed during the rollback (the ABORT send, slow here): the VM stayed paused
    and the caller got a bare CancelledError nobody had asked for."""
    src, dst = drivers
    vm = await src.create_vm(_spec())
    engines = _engines(monkeypatch)

    async def slow_abort(channel: _Faulty, frame: bytes) -> bool:
        if _is(frame, Msg.ABORT):
            await asyncio.sleep(0.05)  # a congested link
        return False

    def on_event(event: MigrationEvent) -> None:
        if event.kind == "round_finished":
            engines[0].cancel()

    plugins, settings, plan = _plan(source_send=slow_abort)
    with pytest.raises(MigrationAbortedError, match="cancelled"):
        await migrate_between(
            src, dst, vm.id, plugins=plugins, settings=settings, plan=plan, on_event=on_event
        )
    assert await _where(src, dst) == ("running", "absent")
    assert engines[0].phase is MigrationPhase.CANCELLED


async def test_a_callers_timeout_during_the_rollback_waits_for_it(drivers, monkeypatch) -> None:
    """The link stalls once the guest is paused; timeout_s (1 s) rolls back, and the caller's
    own timeout expires while the ABORT send waits (up to 2 s): it used to cut the rollback
    short and leave the paused VM running nowhere. Now it waits for the rollback, then
    propagates."""
    src, dst = drivers
    vm = await src.create_vm(_spec())
    aborting = asyncio.Event()

    async def stall(channel: _Faulty, frame: bytes) -> bool:
        if _is(frame, Msg.ABORT):
            aborting.set()
        if _is(frame, Msg.DEVICE) or _is(frame, Msg.ABORT):
            await asyncio.sleep(3600)
        return False

    plugins, settings, plan = _plan(source_send=stall, timeout_s=1)
    engines = _engines(monkeypatch)

    async def caller() -> None:
        """Migrates under its own timeout, which expires 50 ms after the ABORT send began (or
        after 60 s: a timeout_s that never fires fails the checks below)."""
        async with asyncio.timeout(60) as deadline:

            async def arm() -> None:
                await aborting.wait()
                deadline.reschedule(asyncio.get_running_loop().time() + 0.05)

            arming = asyncio.create_task(arm())
            try:
                await migrate_between(
                    src, dst, vm.id, plugins=plugins, settings=settings, plan=plan
                )
            finally:
                arming.cancel()

    with pytest.raises(TimeoutError):
        await caller()
    assert aborting.is_set()
    assert "timeout_s" in (engines[0].report.error or "")  # type: ignore[union-attr]
    assert (await _where(src, dst))[0] == "running"


async def test_a_callers_timeout_during_a_failing_hand_over_stays_a_timeout(
    drivers, monkeypatch
) -> None:
    """The caller's timeout expires after VERIFY, then ACTIVATED is lost and nobody can tell:
    the source stays paused (the hand-over's outcome decides), and the caller gets its
    TimeoutError, not the hand-over's MigrationError."""
    monkeypatch.setattr(engine_module, "DESTINATION_CHECK_S", 0.2)
    monkeypatch.setattr(engine_module, "DESTINATION_CHECK_INTERVAL_S", 0.05)
    src, dst = drivers
    vm = await src.create_vm(_spec())
    verify_sent = asyncio.Event()

    async def note_verify(channel: _Faulty, frame: bytes) -> bool:
        if _is(frame, Msg.VERIFY):
            verify_sent.set()
        return False

    async def lose_activated(channel: _Faulty, frame: bytes) -> bool:
        if _is(frame, Msg.ACTIVATED):
            await asyncio.sleep(0.3)
            await channel.inner.close()
            return True
        return False

    async def nobody_knows() -> bool | None:
        return None

    plugins, settings, plan = _plan(source_send=note_verify, destination_send=lose_activated)

    async def caller() -> None:
        """Migrates under its own timeout, which expires 50 ms after VERIFY."""
        async with asyncio.timeout(None) as deadline:

            async def arm() -> None:
                await verify_sent.wait()
                deadline.reschedule(asyncio.get_running_loop().time() + 0.05)

            arming = asyncio.create_task(arm())
            try:
                await migrate_between(
                    src, dst, vm.id, plugins=plugins, settings=settings, plan=plan,
                    check_destination=nobody_knows,
                )  # fmt: skip
            finally:
                arming.cancel()

    with pytest.raises(TimeoutError):
        await caller()
    assert await _where(src, dst) == ("migrating", "running")


async def test_a_failed_rollback_says_so(drivers) -> None:
    """The source's rollback fails after a broken round: the error used to say the VM was
    rolled back and runs at the source."""
    from novacron_sdk.errors import DriverError

    src, dst = drivers
    vm = await src.create_vm(_spec())
    _failing_source(src, "rollback", DriverError("the hypervisor refused to resume the guest"))

    async def break_round(channel: _Faulty, frame: bytes) -> bool:
        if _is(frame, Msg.ROUND_END):
            msg = "connection reset"
            raise OSError(msg)
        return False

    plugins, settings, plan = _plan(source_send=break_round)
    with pytest.raises(MigrationError, match="the rollback failed too") as raised:
        await migrate_between(src, dst, vm.id, plugins=plugins, settings=settings, plan=plan)
    assert "rolled back" not in str(raised.value)
    assert (await _where(src, dst))[0] == "migrating"


async def test_a_mismatch_whose_table_is_lost_is_still_a_mismatch(drivers) -> None:
    """VERIFIED says the pages differ, then the TABLE frame is lost: the source rolls back
    (the destination discards the VM) and says the memory differed; it used to say the VM was
    kept paused, which it was not."""
    src, dst = drivers
    vm = await src.create_vm(_spec())
    _slow_check(dst, asyncio.Event(), corrupt=True)

    async def lose_table(channel: _Faulty, frame: bytes) -> bool:
        if _is(frame, Msg.TABLE):
            await channel.inner.close()
            return True
        return False

    async def nobody_knows() -> bool | None:
        return None

    plugins, settings, plan = _plan(destination_send=lose_table)
    with pytest.raises(MigrationError, match=r"differs from the source.*table not received"):
        await migrate_between(
            src, dst, vm.id, plugins=plugins, settings=settings, plan=plan,
            check_destination=nobody_knows,
        )  # fmt: skip
    assert await _where(src, dst) == ("running", "absent")
