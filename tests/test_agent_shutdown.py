"""An agent stopping while one of its migrations hands the VM over.

Two real agent services with sim drivers; the source reaches the destination's real API
in-process (httpx's ASGI transport) and its migration listener over real TCP on loopback.
The destination's check of the pages is slowed down (a deliberate fault injector on its sink)
so that the source agent is told to stop while the hand-over runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from novacron_sdk.agent import service as service_module
from novacron_sdk.agent.app import create_app
from novacron_sdk.agent.client import AgentClient
from novacron_sdk.agent.service import AgentService
from novacron_sdk.builtin.sim.driver import SimDriver
from novacron_sdk.config.sections import AgentSettings
from novacron_sdk.errors import NotFoundError
from novacron_sdk.models import VMSpec
from novacron_sdk.plugin.manager import build_plugin_manager
from novacron_sdk.testing.faults import hold_sink_step
from novacron_sdk.testing.waiting import eventually

DEST_URL = "http://host-b.test"
CHECK_S = 1.0


@pytest.fixture
async def agents(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[AgentService, AgentService, asyncio.Event]]:
    """Source and destination agents; the event is set when VERIFY reached the destination."""
    src = SimDriver({"host_name": "a"})
    dst = SimDriver({"host_name": "b"})
    verifying = asyncio.Event()
    hold_sink_step(dst, "page_digests", reached=verifying, delay_s=CHECK_S)
    plugins = build_plugin_manager(autoload=False)
    source = AgentService(plugins=plugins, driver=src, name="a")
    destination = AgentService(plugins=plugins, driver=dst, name="b")
    destination.url = DEST_URL
    to_destination = httpx.ASGITransport(app=create_app(destination))

    def client(url: str, **kwargs: Any) -> AgentClient:
        made = AgentClient(url, **kwargs)
        made._http = httpx.AsyncClient(base_url=url, transport=to_destination)
        return made

    monkeypatch.setattr(service_module, "AgentClient", client)
    try:
        yield source, destination, verifying
    finally:
        await source.close()  # safe twice
        await destination.close()


async def test_stopping_waits_for_a_hand_over_in_progress(agents, monkeypatch) -> None:
    """Cancelled migrations get CANCEL_PATIENCE_S to roll back; a hand-over cannot be
    cancelled, and the agent used to close its driver under it after 10 s (here: after the
    patience, shortened), leaving the VM paused at the source while the destination resumed
    it, and the report unwritten."""
    source, destination, verifying = agents
    monkeypatch.setattr(service_module, "CANCEL_PATIENCE_S", 0.1)
    vm = await source.driver.create_vm(
        VMSpec(name="vm1", memory_mib=16, extra={"workload": {"pattern": "idle"}})
    )
    mig = await source.start_migration(vm.id, DEST_URL, {"transport": "tcp", "codec": "zlib"})
    await eventually(verifying.is_set, "VERIFY reached the destination")
    seen_at_driver_close: list[bool] = []
    real_close = source.driver.close

    async def close() -> None:
        seen_at_driver_close.append(mig.done.is_set())
        await real_close()

    source.driver.close = close  # type: ignore[method-assign]
    await asyncio.wait_for(source.close(), 30)
    assert seen_at_driver_close == [True], "the driver was closed under the hand-over"
    assert mig.error is None
    assert mig.report is not None
    assert mig.report.outcome.value == "completed"
    moved = [v for v in await destination.driver.list_vms() if v.name == "vm1"]
    assert [v.state.value for v in moved] == ["running"]


async def test_stopping_rolls_back_a_migration_before_its_hand_over(agents) -> None:
    """The other side of it: before VERIFY a stopping agent does not wait for the migration;
    it is cancelled and the VM keeps running at the source."""
    source, destination, _ = agents
    vm = await source.driver.create_vm(
        VMSpec(
            name="vm2",
            memory_mib=64,
            extra={"fill": "mixed", "workload": {"pattern": "uniform", "rate_mbps": 400}},
        )
    )
    mig = await source.start_migration(
        vm.id, DEST_URL, {"transport": "tcp", "codec": "zlib", "max_bandwidth_bps": 20e6}
    )
    await eventually(lambda: any(e.kind == "round_started" for e in mig.events), "a round")
    state_at_close: list[str] = []
    real_close = source.driver.close

    async def close() -> None:
        if not state_at_close:  # the fixture closes the agent again
            state_at_close.append((await source.driver.get_vm(vm.id)).state.value)
        await real_close()

    source.driver.close = close  # type: ignore[method-assign]
    await asyncio.wait_for(source.close(), 30)
    assert mig.done.is_set()
    assert mig.error is not None
    assert state_at_close == ["running"]
    assert [v.name for v in await destination.driver.list_vms()] == []


async def test_finished_migrations_are_forgotten_after_their_retention(agents) -> None:
    """A long-running agent kept every migration it ever ran (report and up to 2,000 events
    each) and every incoming one, for good."""
    source, destination, _ = agents
    for agent in (source, destination):
        agent.finished_retention_s = 0.3
        await agent.start()
    vm = await source.driver.create_vm(
        VMSpec(name="vm3", memory_mib=16, extra={"workload": {"pattern": "idle"}})
    )
    mig = await source.start_migration(vm.id, DEST_URL, {"transport": "tcp", "codec": "zlib"})
    await eventually(mig.done.is_set, "the migration ended")
    assert mig.error is None
    assert source.get_outgoing(mig.id) is mig  # still there right after
    await eventually(lambda: not source.outgoing, "the source forgot the migration")
    await eventually(lambda: not destination.incoming, "the destination forgot it")
    with pytest.raises(NotFoundError):
        source.get_outgoing(mig.id)
    assert not source._finished_at
    assert not destination._finished_at


def test_a_retention_shorter_than_a_hand_over_is_refused() -> None:
    with pytest.raises(ValidationError, match="finished_retention_s"):
        AgentSettings.model_validate({"finished_retention_s": 10})
    assert AgentSettings().finished_retention_s == 3600
