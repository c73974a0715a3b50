"""The cluster components inside a real agent orchestrator (sim driver, SQLite store)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from novacron_sdk.builtin.sim.driver import SimDriver
from novacron_sdk.builtin.sqlite_store import SqliteStore
from novacron_sdk.cluster import HostMembership, HostRecord, cluster_status, get_owner, record_owner
from novacron_sdk.cluster.cli import cluster_report
from novacron_sdk.cluster.components import ClusterSettings, register_components
from novacron_sdk.config import load_config
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


def _context(tmp_path: Path, *, enabled: bool) -> InitContext:
    plugins = build_plugin_manager(autoload=False, plugins=[("cluster", ClusterPlugin())])
    config = load_config(
        plugins=plugins,
        environ={},
        overrides={
            "agent.port": 0,
            "agent.name": "host-a",
            "drivers.settings": {"sim": {"state_path": str(tmp_path / "sim.json")}},
            "state.settings": {"path": str(tmp_path / "state.db")},
            "cluster.enabled": enabled,
            "cluster.lease_ttl_s": 2.0,
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
    await membership.stop()
    await store.close()
