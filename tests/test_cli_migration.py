"""The migration commands for real: ``novacron demo``, ``novacron migrate`` and cancel.

Subprocesses and agent processes on loopback; NOVACRON_DISABLED_PLUGINS=* pins the builtins.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from novacron_sdk.agent.client import AgentClient
from novacron_sdk.agent.local import LocalAgent
from novacron_sdk.models import VMSpec, VMState
from novacron_sdk.testing.waiting import eventually

pytestmark = pytest.mark.slow

CORE_ONLY = {**os.environ, "NOVACRON_DISABLED_PLUGINS": "*"}


def novacron(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "novacron_sdk", *args],
        capture_output=True,
        text=True,
        env=CORE_ONLY,
        timeout=timeout,
        check=False,
    )


def test_demo_migrates_and_verifies(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = novacron(
        "demo", "--memory-mib", "64", "--rate-mbps", "10", "--no-progress", "--json", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert "started agents host-a" in result.stdout
    assert "verified: 16384 pages" in result.stdout
    assert "(0 mismatches)" in result.stdout
    report = json.loads(out.read_text())
    assert report["outcome"] == "completed"
    assert report["transport"] == "tcp"
    assert report["memory_bytes"] == 64 * 1024 * 1024
    assert report["bytes_on_wire"] > 0


def test_vm_commands_through_an_agent(tmp_path: Path) -> None:
    """``novacron vm ... --agent URL`` acts on the agent's VMs (its driver, not a local one)."""
    with LocalAgent("vm-a", env=CORE_ONLY) as a:
        created = novacron(
            "vm", "create", "api-vm", "--memory-mib", "32", "--workload",
            '{"pattern": "idle"}', "--agent", a.url, "--json",
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        vm = json.loads(created.stdout)
        assert (vm["name"], vm["state"], vm["memory_mib"], vm["host"]) == (
            "api-vm", "running", 32, "vm-a",
        )  # fmt: skip

        async def on_agent() -> list[str]:
            async with AgentClient(a.url) as agent:
                return [v.name for v in await agent.list_vms()]

        assert asyncio.run(on_agent()) == ["api-vm"]
        listed = novacron("vm", "list", "--agent", a.url, "--json")
        assert [v["id"] for v in json.loads(listed.stdout)] == [vm["id"]]
        stopped = novacron("vm", "stop", "api-vm", "--agent", a.url, "--json")
        assert json.loads(stopped.stdout)["state"] == "stopped", stopped.stderr
        started = novacron("vm", "start", vm["id"], "--agent", a.url, "--json")
        assert json.loads(started.stdout)["state"] == "running", started.stderr
        shown = novacron("vm", "show", "api-vm", "--agent", a.url)
        assert vm["id"] in shown.stdout
        both = novacron("vm", "list", "--agent", a.url, "--driver", "sim")
        assert both.returncode == 2
        assert "drop --driver" in both.stderr
        missing = novacron("vm", "show", "ghost", "--agent", a.url)
        assert missing.returncode == 2
        assert "ghost" in missing.stderr
        destroyed = novacron("vm", "destroy", "api-vm", "--agent", a.url)
        assert destroyed.stdout.strip() == "destroyed api-vm", destroyed.stderr
        assert asyncio.run(on_agent()) == []
    gone = novacron("vm", "list", "--agent", a.url)
    assert gone.returncode != 0
    assert "unreachable" in gone.stderr
    assert "Traceback" not in gone.stderr


def test_migrate_command_and_its_errors(tmp_path: Path) -> None:
    with LocalAgent("cli-a", env=CORE_ONLY) as a, LocalAgent("cli-b", env=CORE_ONLY) as b:
        # The documented flow (docs/migration.md): create through the agent, then migrate.
        created = novacron(
            "vm", "create", "cli-vm", "--memory-mib", "64", "--workload", '{"pattern": "idle"}',
            "--agent", a.url,
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        out = tmp_path / "r.json"
        result = novacron(
            "migrate",
            "cli-vm",
            "--from",
            a.url,
            "--to",
            b.url,
            "--no-progress",
            "--downtime-ms",
            "250",
            "--json",
            str(out),
        )
        assert result.returncode == 0, result.stderr
        assert "completed" in result.stdout
        report = json.loads(out.read_text())
        assert report["downtime_limit_ms"] == 250
        assert report["destination"] == "cli-b"
        missing = novacron("migrate", "ghost", "--from", a.url, "--to", b.url, "--no-progress")
        assert missing.returncode == 2
        assert "no VM 'ghost'" in missing.stderr
        bad = novacron(
            "migrate",
            "cli-vm",
            "--from",
            b.url,
            "--to",
            a.url,
            "--no-progress",
            "--downtime-ms",
            "-5",
        )
        assert bad.returncode == 2
        assert "argument --downtime-ms: '-5' is out of range" in bad.stderr  # argparse's check


async def test_cancel_through_the_api_rolls_back() -> None:
    with LocalAgent("c-a", env=CORE_ONLY) as a, LocalAgent("c-b", env=CORE_ONLY) as b:
        async with AgentClient(a.url) as ca, AgentClient(b.url) as cb:
            vm = await ca.create_vm(
                VMSpec(
                    name="stay",
                    memory_mib=128,
                    extra={"fill": "mixed", "workload": {"pattern": "idle"}},
                )
            )
            before = await ca.vm_digest(vm.id)
            started = await ca.start_migration(vm.id, b.url, {"max_bandwidth_bps": 20e6})
            async with asyncio.timeout(120):
                while True:
                    batch = await ca.migration_events(started["id"], wait_s=2)
                    if any(e["kind"] == "progress" for e in batch["events"]):
                        break
                    assert not batch["done"], await ca.migration(started["id"])
                await ca.cancel_migration(started["id"])
                while not (await ca.migration(started["id"]))["done"]:
                    await asyncio.sleep(0.05)
            final = await ca.migration(started["id"])
            assert final["report"]["outcome"] == "cancelled"
            assert "cancelled" in final["error"]
            assert (await ca.get_vm("stay")).state is VMState.RUNNING
            assert await ca.vm_digest(vm.id) == before

            async def destination_empty() -> bool:
                return await cb.list_vms() == []

            await eventually(destination_empty, "the destination discards the incoming VM")
