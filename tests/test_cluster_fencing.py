"""Split-brain fencing at switch-over, end to end: real sim drivers, the real TCP transport,
a real SQLite store. A destination that loses the ownership swap never resumes the VM, and
a source that cannot re-claim it stays paused."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from novacron_sdk.builtin.sim.driver import SimDriver
from novacron_sdk.builtin.sqlite_store import SqliteStore
from novacron_sdk.cluster import claim_vm, destination_fence, get_owner, record_owner, source_fence
from novacron_sdk.errors import MigrationError
from novacron_sdk.migration import protocol
from novacron_sdk.migration.engine import MigrationEngine
from novacron_sdk.migration.models import MigrationPhase, MigrationReport, MigrationSettings
from novacron_sdk.migration.planner import plan_migration
from novacron_sdk.migration.protocol import Msg
from novacron_sdk.migration.receiver import MigrationReceiver
from novacron_sdk.models import VMSpec, VMState
from novacron_sdk.plugin.manager import build_plugin_manager
from novacron_sdk.transport.interface import Channel, Endpoint

Fence = Callable[[], Awaitable[bool]]


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[SimDriver, SimDriver, SqliteStore]]:
    src, dst = SimDriver({"host_name": "src"}), SimDriver({"host_name": "dst"})
    store = SqliteStore({"path": tmp_path / "state.db"})
    yield src, dst, store
    await src.close()
    await dst.close()
    await store.close()


async def _migrate(
    src: SimDriver, dst: SimDriver, vm_id: str, *, fence: Fence, rollback_fence: Fence
) -> tuple[MigrationReport, MigrationReceiver]:
    """migrate_between, with the fences the agent passes when a state store is configured."""
    plugins = build_plugin_manager(autoload=False)
    settings = MigrationSettings(transport="tcp", codec="zlib", predictor="ewma")
    plan = plan_migration(plugins, settings, Endpoint(host="127.0.0.1"))
    vm = await src.get_vm(vm_id)
    source = await src.open_migration_source(vm.id)
    info = source.info()
    sink = await dst.open_migration_sink(info)
    receiver = MigrationReceiver(sink, info, plan.codec.new_decoder(info.page_size), fence=fence)

    async def serve(channel: Channel) -> None:
        try:
            await protocol.expect_json(channel, Msg.HELLO)
            await receiver.run(channel)
        finally:
            await channel.close()

    listener = await plan.transport.listen(Endpoint(host="127.0.0.1"), serve)
    channel = await plan.transport.connect(listener.endpoint)
    engine = MigrationEngine(
        plugins=plugins,
        settings=settings,
        plan=plan,
        vm=vm.name,
        source_name="src",
        destination_name="dst",
        rollback_fence=rollback_fence,
    )

    async def destination_says_no() -> bool:
        return False

    try:
        await engine.run(source, channel, check_destination=destination_says_no)
    except MigrationError:
        pass  # the outcome is in the report
    finally:
        await channel.close()
        await listener.close()
    assert engine.report is not None
    return engine.report, receiver


async def test_destination_that_loses_the_swap_never_resumes(setup) -> None:
    """A rival claimed the VM after this destination prepared: it must not resume, and the
    source, unable to re-claim, stays paused; the rival alone may run the VM."""
    src, dst, store = setup
    vm = await src.create_vm(VMSpec(name="web", memory_mib=16))
    assert await record_owner(store, "web", "src")
    fence = await destination_fence(store, "web", "dst")
    assert await claim_vm(store, "web", "src", "rival")  # split brain: someone else won
    report, receiver = await _migrate(
        src, dst, vm.id, fence=fence, rollback_fence=source_fence(store, "web", "src")
    )
    assert receiver.state == "aborted"
    assert receiver.vm is None
    assert [v for v in await dst.list_vms() if v.name == "web"] == []
    assert report.outcome is MigrationPhase.FAILED
    assert (await src.get_vm(vm.id)).state is not VMState.RUNNING  # stays paused
    owner = await get_owner(store, "web")
    assert owner is not None
    assert owner.host == "rival"


async def test_winning_destination_resumes_and_owns(setup) -> None:
    """Without a rival the destination wins the swap, resumes, and owns the VM."""
    src, dst, store = setup
    vm = await src.create_vm(VMSpec(name="web", memory_mib=16))
    assert await record_owner(store, "web", "src")
    fence = await destination_fence(store, "web", "dst")
    report, receiver = await _migrate(
        src, dst, vm.id, fence=fence, rollback_fence=source_fence(store, "web", "src")
    )
    assert report.outcome is MigrationPhase.COMPLETED
    assert receiver.state == "active"
    owner = await get_owner(store, "web")
    assert owner is not None
    assert owner.host == "dst"
