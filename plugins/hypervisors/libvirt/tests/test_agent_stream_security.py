"""A stream migration between secured agents (novacron-pqc): the control API calls are
authenticated and every connection of QEMU's stream is sealed and its peer checked.

Skipped when novacron-pqc is not installed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

pytest.importorskip("libvirt", reason="libvirt-python is not installed (needs libvirt-dev)")
pytest.importorskip("novacron_pqc", reason="novacron-pqc is not installed")

from novacron_libvirt.testing.agents import agent_settings
from novacron_libvirt.testing.console import SerialConsole
from novacron_libvirt.testing.lab import BootedGuest, Lab, fresh_guest
from novacron_pqc.http_client import PqcHttpAuth
from novacron_pqc.identity import EnrolledKeys, NodeIdentity
from novacron_pqc.provider import PqcSecurityProvider
from novacron_sdk.agent.client import AgentClient
from novacron_sdk.agent.local import LocalAgent
from novacron_sdk.migration.models import MigrationPhase, MigrationSettings
from novacron_sdk.migration.remote import migrate_via_agents
from novacron_sdk.models import VMState

pytestmark = pytest.mark.slow


def enrolled_identities(root: Path, names: tuple[str, ...]) -> dict[str, NodeIdentity]:
    """One key per name, each enrolled at every other."""
    identities = {name: NodeIdentity.generate(name) for name in names}
    for name, identity in identities.items():
        identity.save(root / name / "node.key")
        for peer, other in identities.items():
            if peer != name:
                EnrolledKeys(root / name / "enrolled").enroll(other.public)
    return identities


def security_settings(root: Path, name: str) -> list[str]:
    return [
        "security.enabled=true",
        f"security.identity_key={root / name / 'node.key'}",
        f"security.enrolled_dir={root / name / 'enrolled'}",
    ]


@pytest.fixture
async def guest(lab: Lab) -> AsyncIterator[BootedGuest]:
    """A freshly booted guest on the source daemon (destroyed wherever it ends up)."""
    async with fresh_guest(lab, "sec") as booted:
        yield booted


async def test_secured_agents_migrate_a_guest(lab: Lab, guest: BootedGuest, tmp_path) -> None:
    identities = enrolled_identities(tmp_path, ("src", "dst", "operator"))
    operator = PqcSecurityProvider(
        {
            "identity": identities["operator"],
            "enrolled": EnrolledKeys(tmp_path / "operator" / "enrolled"),
        }
    )
    with (
        LocalAgent(
            "sec-src", settings=agent_settings(lab, "source") + security_settings(tmp_path, "src")
        ) as source,
        LocalAgent(
            "sec-dst",
            settings=agent_settings(lab, "destination") + security_settings(tmp_path, "dst"),
        ) as destination,
    ):
        report = await migrate_via_agents(
            guest.vm.name,
            source=source.url,
            destination=destination.url,
            settings=MigrationSettings(transport="tcp"),
            auth=PqcHttpAuth(operator),
            poll_wait_s=0.5,
        )
        # The destination seals every migration connection before reading it, so QEMU's
        # stream got through only because the source sealed each of its connections.
        assert report.outcome is MigrationPhase.COMPLETED
        async with AgentClient(destination.url, auth=PqcHttpAuth(operator)) as dst:
            assert (await dst.get_vm(guest.vm.name)).state is VMState.RUNNING
            incoming = await dst.incoming_stream_state(report.migration_id)
            assert incoming["state"] == "completed"
    console = await SerialConsole.connect(lab.serial_socket(lab.destination, guest.vm.name))
    try:
        first = await console.next_heartbeat(0)
        assert await console.next_heartbeat(first) > first
    finally:
        await console.close()
