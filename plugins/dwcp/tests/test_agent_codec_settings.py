"""The ``codecs`` config section on real agents: DWCP reference files in a live migration.

Two agent processes on loopback run the sim driver with the same image directory; the VM's
memory is loaded from an image of random (incompressible) bytes, which is also given to both
agents as a DWCP reference file. No mocks.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from novacron_sdk.agent.client import AgentClient
from novacron_sdk.agent.local import LocalAgent
from novacron_sdk.errors import MigrationError, NovaCronError
from novacron_sdk.migration.models import MigrationPhase
from novacron_sdk.migration.remote import migrate_via_agents
from novacron_sdk.models import VMSpec, VMState

pytestmark = pytest.mark.slow

MEMORY_MIB = 16


def _agent(name: str, images: Path, reference: Path | None) -> LocalAgent:
    settings = [f"drivers.settings={json.dumps({'sim': {'image_dir': str(images)}})}"]
    if reference is not None:
        codecs = {"dwcp": {"reference_files": [str(reference)]}}
        settings.append(f"codecs.settings={json.dumps(codecs)}")
    return LocalAgent(name, settings=settings)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "noise.img").write_bytes(random.Random(5).randbytes(MEMORY_MIB << 20))
    return folder


async def _migrate(source: LocalAgent, destination: LocalAgent, name: str) -> int:
    """Migrate a VM booted from the noise image; the bytes that crossed the wire."""
    async with AgentClient(source.url) as client:
        vm = await client.create_vm(VMSpec(name=name, memory_mib=MEMORY_MIB, image="noise.img"))
    report = await migrate_via_agents(vm.id, source=source.url, destination=destination.url)
    assert report.codec == "dwcp"
    assert report.verification["mismatches"] == 0
    async with AgentClient(destination.url) as client:
        moved = await client.get_vm(name)
        assert moved.state is VMState.RUNNING
        await client.destroy_vm(moved.id)
    return report.bytes_on_wire


async def test_pages_of_a_reference_file_cross_as_references(images: Path) -> None:
    reference = images / "noise.img"
    with _agent("plain-a", images, None) as a, _agent("plain-b", images, None) as b:
        plain = await _migrate(a, b, "plain")
    with _agent("refs-a", images, reference) as a, _agent("refs-b", images, reference) as b:
        referenced = await _migrate(a, b, "refs")
    # Without references the random memory crosses whole; with them, as 8-byte references.
    assert plain > MEMORY_MIB << 20
    assert referenced < plain // 10


async def test_a_destination_with_other_reference_files_rolls_back(
    images: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.bin"
    other.write_bytes(random.Random(6).randbytes(1 << 20))
    with (
        _agent("src", images, images / "noise.img") as a,
        _agent("dst", images, other) as b,
    ):
        async with AgentClient(a.url) as client:
            vm = await client.create_vm(
                VMSpec(name="guarded", memory_mib=MEMORY_MIB, image="noise.img")
            )
            with pytest.raises(MigrationError) as info:
                await migrate_via_agents(vm.id, source=a.url, destination=b.url)
            assert info.value.report is not None
            assert info.value.report.outcome is MigrationPhase.ROLLED_BACK
            # Nothing lost: the guest runs on at the source, and the destination says why.
            assert (await client.get_vm("guarded")).state is VMState.RUNNING
        async with AgentClient(b.url) as client:
            incoming = await client.incoming_state(info.value.report.migration_id)
        assert "reference_files" in (incoming["error"] or ""), incoming


def test_agent_refuses_a_missing_reference_file(images: Path) -> None:
    agent = _agent("bad-codec", images, images / "missing.img")
    with pytest.raises(NovaCronError, match=r"reference file .*missing\.img"), agent:
        pass


async def test_a_reference_file_gone_after_start_fails_the_migration_cleanly(
    images: Path, tmp_path: Path
) -> None:
    """A kernel replaced after the agents started: refused or rolled back, nothing lost."""
    content = random.Random(7).randbytes(1 << 20)
    ours, theirs = tmp_path / "src-vmlinuz", tmp_path / "dst-vmlinuz"
    ours.write_bytes(content)
    theirs.write_bytes(content)
    with _agent("src", images, ours) as a, _agent("dst", images, theirs) as b:
        async with AgentClient(a.url) as client:
            vm = await client.create_vm(
                VMSpec(name="kept", memory_mib=MEMORY_MIB, image="noise.img")
            )
            theirs.unlink()  # the destination cannot make its decoder: refused up front
            with pytest.raises(NovaCronError, match=r"reference file .*dst-vmlinuz"):
                await migrate_via_agents(vm.id, source=a.url, destination=b.url)
            assert (await client.get_vm("kept")).state is VMState.RUNNING
            theirs.write_bytes(content)
            ours.unlink()  # the source cannot make its encoder: the engine rolls back
            with pytest.raises(MigrationError, match=r"reference file .*src-vmlinuz") as info:
                await migrate_via_agents(vm.id, source=a.url, destination=b.url)
            assert info.value.report is not None
            assert info.value.report.outcome is MigrationPhase.ROLLED_BACK
            assert (await client.get_vm("kept")).state is VMState.RUNNING
