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


def test_migrate_command_and_its_errors(tmp_path: Path) -> None:
    with LocalAgent("cli-a", env=CORE_ONLY) as a, LocalAgent("cli-b", env=CORE_ONLY) as b:

        async def create() -> None:
            async with AgentClient(a.url) as ca:
                await ca.create_vm(
                    VMSpec(name="cli-vm", memory_mib=64, extra={"workload": {"pattern": "idle"}})
                )

        asyncio.run(create())
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
        assert "downtime_limit_ms" in bad.stderr


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
            for _ in range(100):
                if not await cb.list_vms():
                    break
                await asyncio.sleep(0.05)
            assert await cb.list_vms() == []
