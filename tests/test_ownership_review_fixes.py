"""VM ownership records over a VM's life: destroy, re-creation elsewhere, stream migrations.

Two in-process agents (sim driver) share one SQLite state store. The membership's periodic
pass is slowed down (lease ttl 300 s) and driven by hand, so each step is deterministic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from novacron_sdk.agent.client import AgentClient
from novacron_sdk.agent.service import AgentService
from novacron_sdk.agent.stream import IncomingStream
from novacron_sdk.builtin.sim.driver import SimDriver
from novacron_sdk.builtin.sqlite_store import SqliteStore
from novacron_sdk.cluster import claim_vm, get_owner, record_owner
from novacron_sdk.cluster.components import MemberComponent, _migrating
from novacron_sdk.compute.interface import (
    IncomingStreamMigration,
    StreamMigrationOffer,
    StreamMigrationOutcome,
    StreamMigrationTicket,
)
from novacron_sdk.config import load_config
from novacron_sdk.errors import DriverError, MigrationError
from novacron_sdk.init import build_orchestrator
from novacron_sdk.init.interface import InitContext
from novacron_sdk.init.orchestrator import Orchestrator
from novacron_sdk.migration.models import MigrationPhase
from novacron_sdk.models import VM, DriverFeature, VMSpec
from novacron_sdk.plugin.manager import build_plugin_manager

COMPONENTS = ("agent.driver", "agent.service", "agent.api", "cluster.member")


@dataclass
class Agent:
    orchestrator: Orchestrator
    service: AgentService
    member: MemberComponent
    store: SqliteStore

    async def adopt(self) -> None:
        """One pass of the membership (the periodic one waits 100 s here)."""
        await self.member._adopt(self.store, self.service)


async def _start(tmp_path: Path, name: str, store: SqliteStore) -> Agent:
    plugins = build_plugin_manager(autoload=False)
    config = load_config(
        plugins=plugins,
        environ={},
        overrides={
            "agent.port": 0,
            "agent.name": name,
            "drivers.settings": {"sim": {"state_path": str(tmp_path / f"{name}.json")}},
            "state.settings": {"path": str(tmp_path / "state.db")},
            "cluster.enabled": True,
            "cluster.lease_ttl_s": 300.0,
        },
    )
    context = InitContext(config=config, plugins=plugins)
    orchestrator = build_orchestrator(context, names=COMPONENTS)
    await orchestrator.start()
    member = orchestrator.component("cluster.member")
    assert isinstance(member, MemberComponent)
    return Agent(orchestrator, context.values["service"], member, store)


@pytest.fixture
async def agents(tmp_path: Path) -> AsyncIterator[tuple[Agent, Agent]]:
    store = SqliteStore({"path": tmp_path / "state.db"})
    try:
        a = await _start(tmp_path, "host-a", store)
        try:
            b = await _start(tmp_path, "host-b", store)
            try:
                yield a, b
            finally:
                await b.orchestrator.stop()
        finally:
            await a.orchestrator.stop()
    finally:
        await store.close()


async def _host(store: SqliteStore, vm: str) -> str | None:
    owner = await get_owner(store, vm)
    return owner.host if owner is not None else None


# -- bug 1: a destroyed VM's record --------------------------------------------------------
async def test_destroy_through_the_api_releases_the_record(agents: tuple[Agent, Agent]) -> None:
    """The record goes with the VM, so the same name created on another host is owned there."""
    a, b = agents
    async with AgentClient(a.service.url) as client:
        vm = await client.create_vm(VMSpec(name="web", memory_mib=16))
        await a.adopt()
        assert await _host(a.store, "web") == "host-a"
        await client.destroy_vm(vm.id)
    assert await _host(a.store, "web") is None
    async with AgentClient(b.service.url) as client:
        await client.create_vm(VMSpec(name="web", memory_mib=16))
    await b.adopt()
    assert await _host(a.store, "web") == "host-b"


async def test_destroy_succeeds_when_the_store_fails(
    agents: tuple[Agent, Agent], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store error is logged; the VM is destroyed all the same, and a later pass releases."""
    a, _ = agents
    async with AgentClient(a.service.url) as client:
        vm = await client.create_vm(VMSpec(name="web", memory_mib=16))
        await a.adopt()

        async def broken(*args: Any, **kwargs: Any) -> Any:
            from novacron_sdk.errors import StateStoreError

            raise StateStoreError("store unreachable")

        with monkeypatch.context() as patch:
            patch.setattr(a.service.state_store, "txn", broken)
            await client.destroy_vm(vm.id)
        assert await client.list_vms() == []
    assert await _host(a.store, "web") == "host-a"
    await a.adopt()
    assert await _host(a.store, "web") is None


async def test_membership_releases_records_of_vms_gone_from_the_hypervisor(
    agents: tuple[Agent, Agent],
) -> None:
    """A VM destroyed on the hypervisor directly: its host's next pass releases the record;
    a host that met the name under another host's record asks again on its next pass."""
    a, b = agents
    vm = await a.service.driver.create_vm(VMSpec(name="web", memory_mib=16))
    await a.adopt()
    await a.service.driver.destroy(vm.id)
    await b.service.driver.create_vm(VMSpec(name="web", memory_mib=16))
    await b.adopt()
    assert await _host(a.store, "web") == "host-a"  # not released yet
    await a.adopt()
    assert await _host(a.store, "web") is None
    await b.adopt()
    assert await _host(a.store, "web") == "host-b"


async def test_a_vm_away_in_a_migration_keeps_its_record(agents: tuple[Agent, Agent]) -> None:
    """A known VM missing while an outgoing migration moves it is left to the fences."""
    a, _ = agents
    vm = await a.service.driver.create_vm(VMSpec(name="web", memory_mib=16))
    await a.adopt()

    class Busy:
        vm = "web"
        phase = MigrationPhase.PRECOPY
        report = None

    from novacron_sdk.agent.service import OutgoingMigration

    a.service.outgoing["m1"] = OutgoingMigration(
        id="m1",
        vm=vm.id,
        destination="http://127.0.0.1:9",
        engine=Busy(),  # type: ignore[arg-type]
    )
    await a.service.driver.destroy(vm.id)
    await a.adopt()
    assert await _host(a.store, "web") == "host-a"
    a.service.outgoing["m1"].done.set()
    await a.adopt()
    assert await _host(a.store, "web") is None


async def test_migration_refused_when_the_record_names_another_host(
    agents: tuple[Agent, Agent],
) -> None:
    a, _ = agents
    await a.service.driver.create_vm(VMSpec(name="web", memory_mib=16))
    assert await record_owner(a.store, "web", "host-z")
    with pytest.raises(MigrationError, match="owned by host 'host-z'"):
        await a.service.start_migration("web", "http://127.0.0.1:9")
    assert a.service.outgoing == {}


# -- bug 2: hypervisor-stream migrations ----------------------------------------------------
SESSIONS: dict[str, StreamSim] = {}


class _Incoming(IncomingStreamMigration):
    def __init__(self, ticket: StreamMigrationTicket) -> None:
        self.ticket = ticket
        self.finished: list[bool] = []

    async def finish(self, succeeded: bool) -> VM | None:
        self.finished.append(succeeded)
        return None

    async def settled(self) -> bool:
        return True


class StreamSim(SimDriver):
    """The sim driver, migrating like a hypervisor that streams the VM itself."""

    features = (SimDriver.features - {DriverFeature.LIVE_MIGRATION_SOURCE}) | {
        DriverFeature.STREAM_MIGRATION_SOURCE,
        DriverFeature.STREAM_MIGRATION_SINK,
    }
    before_switch_over: Callable[[], Awaitable[None]] | None = None
    fail = False

    async def stream_migration_offer(self, vm_id: str) -> StreamMigrationOffer:
        return StreamMigrationOffer(driver=self.name, vm=await self.get_vm(vm_id))

    async def prepare_stream_migration(
        self, offer: StreamMigrationOffer, *, transport: Any, listen: Any, session: str
    ) -> IncomingStreamMigration:
        SESSIONS[session] = self
        return _Incoming(StreamMigrationTicket(endpoint=listen, session=session))

    async def migrate_stream_out(
        self, vm_id: str, ticket: StreamMigrationTicket, **kwargs: Any
    ) -> StreamMigrationOutcome:
        vm = await self.get_vm(vm_id)
        if self.before_switch_over is not None:
            await self.before_switch_over()
        if self.fail:
            raise DriverError("the hypervisor's job failed")
        started = time.monotonic()
        new = await SESSIONS[ticket.session].create_vm(VMSpec(name=vm.name, memory_mib=16))
        await self.destroy(vm.id)
        return StreamMigrationOutcome(vm=new, total_s=time.monotonic() - started)


@pytest.fixture
async def streaming(agents: tuple[Agent, Agent]) -> tuple[Agent, Agent]:
    a, b = agents
    for agent in agents:
        await agent.service.driver.close()
        agent.service.driver = StreamSim({"host_name": agent.service.name})
    await a.service.driver.create_vm(VMSpec(name="web", memory_mib=16))
    await a.adopt()
    return a, b


async def _migrate(a: Agent, b: Agent) -> Any:
    mig = await a.service.start_migration("web", b.service.url)
    await asyncio.wait_for(mig.done.wait(), 30)
    return mig


async def test_stream_migration_moves_ownership(streaming: tuple[Agent, Agent]) -> None:
    a, b = streaming
    mig = await _migrate(a, b)
    assert mig.error is None
    assert await _host(a.store, "web") == "host-b"
    assert [s.state for s in b.service.incoming_streams.values()] == ["completed"]
    await a.adopt()
    await b.adopt()
    assert await _host(a.store, "web") == "host-b"


async def test_destination_that_loses_the_claim_does_not_report_success(
    streaming: tuple[Agent, Agent],
) -> None:
    a, b = streaming

    async def someone_else_claims() -> None:
        assert await claim_vm(a.store, "web", "host-a", "host-z")

    a.service.driver.before_switch_over = someone_else_claims  # type: ignore[attr-defined]
    mig = await _migrate(a, b)
    assert mig.error is not None
    assert "another host owns it now" in mig.error
    assert mig.as_dict()["report"]["outcome"] == "failed"
    (incoming,) = b.service.incoming_streams.values()
    assert incoming.state == "aborted"
    assert incoming.handle.finished == [True]  # type: ignore[union-attr]  # never discarded
    assert await _host(a.store, "web") == "host-z"


async def test_failed_stream_migration_re_claims_the_vm_at_the_source(
    streaming: tuple[Agent, Agent],
) -> None:
    a, b = streaming
    before = await get_owner(a.store, "web")
    a.service.driver.fail = True  # type: ignore[attr-defined]
    mig = await _migrate(a, b)
    assert mig.as_dict()["report"]["outcome"] == "rolled_back"
    after = await get_owner(a.store, "web")
    assert before is not None
    assert after is not None
    assert (after.host, after.epoch) == ("host-a", before.epoch + 1)  # re-claimed
    assert [e.kind for e in mig.events][-1] == "rolled_back"


async def test_failed_stream_migration_is_no_roll_back_when_another_host_owns_the_vm(
    streaming: tuple[Agent, Agent],
) -> None:
    a, b = streaming

    async def destination_claims() -> None:
        assert await claim_vm(a.store, "web", "host-a", "host-b")

    a.service.driver.before_switch_over = destination_claims  # type: ignore[attr-defined]
    a.service.driver.fail = True  # type: ignore[attr-defined]
    mig = await _migrate(a, b)
    assert mig.as_dict()["report"]["outcome"] == "failed"
    assert "another host may own the VM now" in mig.error
    assert "rolled_back" not in [e.kind for e in mig.events]
    assert await _host(a.store, "web") == "host-b"


async def test_membership_leaves_incoming_stream_migrations_alone(
    agents: tuple[Agent, Agent],
) -> None:
    _, b = agents
    b.service.incoming_streams["m1"] = IncomingStream(id="m1", token="t", transport="tcp", vm="web")
    assert "web" in _migrating(b.service)
    await b.service.driver.create_vm(VMSpec(name="web", memory_mib=16))
    await b.adopt()
    assert await _host(b.store, "web") is None
    b.service.incoming_streams["m1"].state = "completed"
    assert "web" not in _migrating(b.service)
