"""The cluster components inside a real agent orchestrator (sim driver, SQLite store)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from novacron_sdk.agent.client import AgentClient
from novacron_sdk.builtin.sim.driver import SimDriver
from novacron_sdk.builtin.sqlite_store import SqliteStore
from novacron_sdk.cluster import HostMembership, HostRecord, cluster_status, get_owner, record_owner
from novacron_sdk.cluster.cli import cluster_report
from novacron_sdk.cluster.components import ClusterSettings, register_components
from novacron_sdk.config import load_config
from novacron_sdk.errors import InitError
from novacron_sdk.init import build_orchestrator
from novacron_sdk.init.interface import InitContext
from novacron_sdk.models import VMSpec
from novacron_sdk.plugin import hookimpl
from novacron_sdk.plugin.manager import build_plugin_manager
from novacron_sdk.testing.store import eventually

COMPONENTS = ("agent.driver", "agent.service", "agent.api", "cluster.member", "cluster.controller")


class ClusterPlugin:
    """What the builtin core plugin registers once the lead applies the cluster patch."""

    @hookimpl
    def novacron_add_config_sections(self, registry: Any) -> None:
        registry.register("cluster", ClusterSettings)

    @hookimpl
    def novacron_register_init_components(self, registry: Any) -> None:
        register_components(registry)


def _context(
    tmp_path: Path,
    *,
    enabled: bool,
    sim: str = "sim.json",
    state: str | None = None,
    lease_ttl_s: float = 3.0,  # kept alive every ttl/3: a stall of up to 2 s loses no lease
) -> InitContext:
    plugins = build_plugin_manager(autoload=False, plugins=[("cluster", ClusterPlugin())])
    config = load_config(
        plugins=plugins,
        environ={},
        overrides={
            "agent.port": 0,
            "agent.name": "host-a",
            "drivers.settings": {"sim": {"state_path": str(tmp_path / sim)}},
            "state.settings": {"path": state or str(tmp_path / "state.db")},
            "cluster.enabled": enabled,
            "cluster.lease_ttl_s": lease_ttl_s,
        },
    )
    return InitContext(config=config, plugins=plugins)


async def test_agent_joins_the_cluster_and_leaves_it(tmp_path: Path) -> None:
    """Started, the agent registers its host, owns its VMs and leads; stopped, it is gone."""
    sim = SimDriver({"state_path": str(tmp_path / "sim.json")})
    vm = await sim.create_vm(VMSpec(name="web", memory_mib=16))
    await sim.close()
    orchestrator = build_orchestrator(_context(tmp_path, enabled=True), names=COMPONENTS)
    store = SqliteStore({"path": tmp_path / "state.db"})
    try:
        await orchestrator.start()
        status = await cluster_status(store)
        assert [h.name for h in status.hosts] == ["host-a"]
        assert status.hosts[0].url is not None
        assert status.hosts[0].url.startswith("http://127.0.0.1:")
        owner = await get_owner(store, vm.name)
        assert owner is not None
        assert owner.host == "host-a"

        async def leads() -> bool:
            return (await cluster_status(store)).controller == "host-a"

        await eventually(leads, "controller election")
    finally:
        await orchestrator.stop()
    status = await cluster_status(store)
    assert status.hosts == []
    assert status.controller is None
    assert status.orphaned_vms == [vm.name]  # still owned by host-a, which is gone
    await store.close()


async def test_cluster_components_are_off_by_default(tmp_path: Path) -> None:
    """Without ``cluster.enabled`` the agent writes no cluster record at all."""
    orchestrator = build_orchestrator(_context(tmp_path, enabled=False), names=COMPONENTS)
    try:
        await orchestrator.start()
    finally:
        await orchestrator.stop()
    assert not (tmp_path / "state.db").exists()


async def test_status_report_prints_the_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``novacron status --cluster`` (cluster_report) prints hosts, owners and orphans."""
    context = _context(tmp_path, enabled=True)
    store = SqliteStore({"path": tmp_path / "state.db"})
    membership = HostMembership(store, HostRecord(name="host-a", vcpus=4), ttl_s=30)
    try:
        await membership.start()
        await record_owner(store, "web", "host-a")
        await record_owner(store, "db", "host-gone")
        await asyncio.to_thread(cluster_report, context.config, context.plugins, as_json=True)
        data = json.loads(capsys.readouterr().out)
        assert [h["name"] for h in data["hosts"]] == ["host-a"]
        assert data["orphaned_vms"] == ["db"]
        await asyncio.to_thread(cluster_report, context.config, context.plugins, as_json=False)
        text = capsys.readouterr()
        assert "host-a" in text.out
        assert "host-gone" in text.out
    finally:
        await membership.stop()
        await store.close()


async def test_agent_owns_vms_created_after_it_started(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A VM created through the agent's API later is recorded as the agent's within a
    keep-alive period (lease ttl / 3), and ``status --cluster --json`` lists it."""
    context = _context(tmp_path, enabled=True)
    orchestrator = build_orchestrator(context, names=COMPONENTS)
    store = SqliteStore({"path": tmp_path / "state.db"})
    try:
        await orchestrator.start()
        assert (await cluster_status(store)).vms == []
        url = context.values["service"].url
        async with AgentClient(url) as client:
            vm = await client.create_vm(VMSpec(name="late", memory_mib=16))

        async def owned() -> bool:
            owner = await get_owner(store, vm.name)
            return owner is not None and owner.host == "host-a"

        await eventually(owned, "ownership record of a VM created after start-up")
        await asyncio.to_thread(cluster_report, context.config, context.plugins, as_json=True)
        data = json.loads(capsys.readouterr().out)
        assert [(v["vm"], v["host"]) for v in data["vms"]] == [("late", "host-a")]
        assert data["orphaned_vms"] == []
    finally:
        await orchestrator.stop()
        await store.close()


async def test_a_migration_records_the_source_as_owner_before_the_destination_reads_it(
    tmp_path: Path,
) -> None:
    """A VM created since the membership's last pass gets its owner record when a migration
    starts, before the destination is asked to prepare (so the record the destination's
    fence reads cannot appear later). Here the destination is unreachable: the record is
    there all the same, and the VM stays where it is."""
    from novacron_sdk.errors import NovaCronError

    context = _context(tmp_path, enabled=True, lease_ttl_s=300.0)  # no pass during the test
    orchestrator = build_orchestrator(context, names=COMPONENTS)
    store = SqliteStore({"path": tmp_path / "state.db"})
    try:
        await orchestrator.start()
        service = context.values["service"]
        async with AgentClient(service.url) as client:
            vm = await client.create_vm(VMSpec(name="fresh", memory_mib=16))
        assert await get_owner(store, vm.name) is None
        with pytest.raises(NovaCronError, match="unreachable"):
            await service.start_migration(vm.name, "http://127.0.0.1:9")
        owner = await get_owner(store, vm.name)
        assert owner is not None
        assert owner.host == "host-a"
    finally:
        await orchestrator.stop()
        await store.close()


async def test_a_second_agent_with_the_same_name_does_not_take_the_host_over(
    tmp_path: Path,
) -> None:
    """Two agents named host-a on one store: the second's cluster.member is degraded with
    an error naming the first's URL; the first keeps its host record."""
    first = build_orchestrator(_context(tmp_path, enabled=True), names=COMPONENTS)
    second_context = _context(tmp_path, enabled=True, sim="sim-2.json")
    second = build_orchestrator(second_context, names=COMPONENTS)
    store = SqliteStore({"path": tmp_path / "state.db"})
    try:
        await first.start()
        [host] = (await cluster_status(store)).hosts
        await second.start()
        member = next(s for s in second.status() if s.name == "cluster.member")
        assert member.state == "degraded"
        assert member.attempts == 1  # a ConfigError: not retried
        assert member.error is not None
        assert f"host name 'host-a' is taken: another agent at {host.url}" in member.error
        assert "give each agent its own agent.name" in member.error
        assert second_context.values["service"].url != host.url
        assert (await cluster_status(store)).hosts == [host]
    finally:
        await second.stop()
        await first.stop()
        await store.close()


async def test_an_unusable_store_file_fails_start_up_at_once(tmp_path: Path) -> None:
    """A store path the agent cannot create is a ConfigError: not retried, and the error
    names state.settings.path."""
    context = _context(tmp_path, enabled=True, state="/proc/novacron/state.db")
    orchestrator = build_orchestrator(context, names=COMPONENTS)
    with pytest.raises(InitError) as info:
        await orchestrator.start()
    assert "which failed: StoreConfigError: state.settings.path: the sqlite state store " in str(
        info.value
    )
    assert "cannot create the directory /proc/novacron" in str(info.value)
    store = next(s for s in orchestrator.status() if s.name == "cluster.store")
    assert store.attempts == 1
