"""Authenticated agents as real processes on 127.0.0.1: only enrolled peers get in.

Needs the agent patches listed in plugins/security/pqc/AGENT_PATCHES.md (``AgentClient``
takes ``auth=``; the agent runs the ``agent.security`` component). Skipped until they land.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import httpx
import pytest

from novacron_pqc.http_client import PqcHttpAuth
from novacron_pqc.identity import EnrolledKeys, NodeIdentity
from novacron_pqc.provider import PqcSecurityProvider
from novacron_sdk.agent.client import AgentClient
from novacron_sdk.agent.local import LocalAgent
from novacron_sdk.builtin.tcp_transport import TcpTransport
from novacron_sdk.errors import NovaCronError, SecurityError
from novacron_sdk.hypervisors.interface import MigrationSourceInfo
from novacron_sdk.migration import protocol
from novacron_sdk.migration.protocol import Msg
from novacron_sdk.models import VMSpec, VMState
from novacron_sdk.plugin.manager import build_plugin_manager
from novacron_sdk.security.channel import secure_channel
from novacron_sdk.testing.waiting import eventually
from novacron_sdk.transport.interface import Endpoint

PATCHED = "auth" in inspect.signature(AgentClient.__init__).parameters
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not PATCHED, reason="needs the agent patches in AGENT_PATCHES.md"),
]

# Every installed plugin but this one is disabled: the agents pin the builtin TCP transport.
OTHERS = sorted({ep.name for ep in entry_points(group="novacron_sdk")} - {"pqc"})
ENV = {**os.environ, "NOVACRON_DISABLED_PLUGINS": ",".join(OTHERS) or "none"}


@dataclass
class Keys:
    key: Path
    enrolled: Path
    identity: NodeIdentity

    def provider(self) -> PqcSecurityProvider:
        return PqcSecurityProvider(
            {"identity": self.identity, "enrolled": EnrolledKeys(self.enrolled)}
        )

    def settings(self) -> list[str]:
        return [
            "security.enabled=true",
            f"security.identity_key={self.key}",
            f"security.enrolled_dir={self.enrolled}",
        ]


def make_keys(root: Path, name: str) -> Keys:
    identity = NodeIdentity.generate(name)
    identity.save(root / name / "node.key")
    return Keys(root / name / "node.key", root / name / "enrolled", identity)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("keys")
    a, b, operator = (make_keys(root, n) for n in ("host-a", "host-b", "operator"))
    for host, peers in ((a, (b, operator)), (b, (a, operator)), (operator, (a, b))):
        for peer in peers:
            EnrolledKeys(host.enrolled).enroll(peer.identity.public)
    with (
        LocalAgent("host-a", settings=a.settings(), env=ENV) as agent_a,
        LocalAgent("host-b", settings=b.settings(), env=ENV) as agent_b,
    ):
        yield {"a": agent_a, "b": agent_b, "keys": {"a": a, "b": b, "operator": operator}}


@pytest.fixture
async def clients(cluster) -> AsyncIterator[tuple[AgentClient, AgentClient]]:
    operator = cluster["keys"]["operator"]
    async with (
        AgentClient(cluster["a"].url, auth=PqcHttpAuth(operator.provider())) as ca,
        AgentClient(cluster["b"].url, auth=PqcHttpAuth(operator.provider())) as cb,
    ):
        yield ca, cb


async def test_health_is_the_only_open_route(cluster) -> None:
    async with httpx.AsyncClient(base_url=cluster["a"].url) as http:
        health = await http.get("/health")
        assert health.json() == {"status": "ok"}
        for path in ("/v1/status", "/v1/vms", "/metrics", "/openapi.json"):
            denied = await http.get(path)
            assert denied.status_code == 401, path
            assert "authentication required" in denied.json()["error"]
            assert "host-a" not in denied.text


async def test_unenrolled_peer_is_rejected(cluster, tmp_path) -> None:
    stranger = make_keys(tmp_path, "stranger")
    async with AgentClient(cluster["a"].url, auth=PqcHttpAuth(stranger.provider())) as client:
        with pytest.raises(SecurityError) as caught:
            await client.list_vms()
    assert str(caught.value).startswith(f"agent {cluster['a'].url} refused the handshake: ")
    assert "not enrolled on 'host-a'; to trust it, run on host-a:" in str(caught.value)
    # host-a's own log says "here" (the agent may write it after it answered)
    await logged(cluster["a"], "'stranger'", "not enrolled here")


async def test_wrong_key_is_rejected(cluster, tmp_path) -> None:
    impostor = make_keys(tmp_path, "host-b")  # host-b's name, other keys
    EnrolledKeys(impostor.enrolled).enroll(cluster["keys"]["a"].identity.public)
    async with AgentClient(cluster["a"].url, auth=PqcHttpAuth(impostor.provider())) as client:
        with pytest.raises(SecurityError, match="wrong key"):
            await client.list_vms()


async def logged(agent: LocalAgent, *fragments: str) -> None:
    """Wait until the end of ``agent``'s log holds every fragment (one log line may hold
    several; the agent writes after the exchange the test saw)."""

    def found() -> bool:
        tail = agent.log_tail(50)
        return all(fragment in tail for fragment in fragments)

    await eventually(found, f"{agent.name} logs {fragments}")


async def _sealed_to_migration_endpoint(cluster, clients, migration_id: str) -> tuple[Any, str]:
    """A sealed channel from the operator to host-b's migration endpoint, and the token."""
    _, cb = clients
    prepared = await cb.prepare_incoming(
        migration_id=migration_id,
        info=MigrationSourceInfo(spec=VMSpec(name=migration_id, memory_mib=64), page_count=16384),
        transport="tcp",
        codec="zlib",
        verify="pages",
    )
    raw = await TcpTransport().connect(Endpoint.model_validate(prepared["endpoint"]))
    try:
        plugins = build_plugin_manager(autoload=False)
        operator = cluster["keys"]["operator"].provider()
        return await secure_channel(plugins, raw, "initiator", operator), prepared["token"]
    except BaseException:
        await raw.close()
        raise


async def test_tampered_frame_is_rejected(cluster, clients) -> None:
    sealed, token = await _sealed_to_migration_endpoint(cluster, clients, "tamper1")
    hello = protocol.pack_json(
        Msg.HELLO,
        {"protocol": protocol.PROTOCOL_VERSION, "migration_id": "tamper1", "token": token},
    )
    try:
        frame = bytearray(sealed.session.seal(hello))
        frame[-5] ^= 0x01
        await sealed.inner.send(bytes(frame))
        await logged(cluster["b"], "failed authentication: it was altered in transit")
    finally:
        await sealed.close()
    assert (await clients[1].incoming_state("tamper1"))["state"] == "pending"


async def test_replayed_frame_is_rejected(cluster, clients) -> None:
    sealed, token = await _sealed_to_migration_endpoint(cluster, clients, "replay1")
    hello = protocol.pack_json(
        Msg.HELLO,
        {"protocol": protocol.PROTOCOL_VERSION, "migration_id": "replay1", "token": token},
    )
    reasons: list[str] = []
    try:
        frame = bytes(sealed.session.seal(hello))
        await sealed.inner.send(frame)
        await sealed.inner.send(frame)  # the same sealed bytes again
        try:
            while True:
                kind, body = protocol.split(await asyncio.wait_for(sealed.recv(), 20))
                if kind is Msg.ERROR:
                    reasons.append(str(protocol.parse_json(kind, body).get("reason")))
                    break
        except Exception as exc:  # the destination may close right after its ERROR
            reasons.append(str(exc))
    finally:
        await sealed.close()
    # Said in the ERROR, or (when the connection closed first) in the log, maybe a bit later.
    await eventually(
        lambda: "replayed frame rejected" in " ".join(reasons) + cluster["b"].log_tail(50),
        "the replayed frame is rejected",
    )


async def test_migration_between_enrolled_agents_is_sealed_end_to_end(cluster, clients) -> None:
    ca, cb = clients
    vm = await ca.create_vm(
        VMSpec(
            name="secure-mover",
            memory_mib=64,
            extra={"fill": "mixed", "workload": {"pattern": "hot-set", "rate_mbps": 10}},
        )
    )
    started = await ca.start_migration(vm.id, cluster["b"].url)
    state: dict[str, Any] = {}

    async def done() -> bool:
        state.update(await ca.migration(started["id"]))
        return bool(state["done"])

    await eventually(done, "the migration ends", within_s=60, every_s=0.1)
    assert state["error"] is None, state["error"]
    report = state["report"]
    assert report["outcome"] == "completed"
    assert report["verification"]["mismatches"] == 0
    moved = await cb.get_vm("secure-mover")
    assert moved.state is VMState.RUNNING
    assert report["transport"] == "tcp"
    await cb.destroy_vm(moved.id)
    # host-b's migration endpoint handshakes before it reads a byte of migration protocol
    # (test_plain_source_is_rejected), so a completed migration is one that ran sealed.
    secrets_ = []
    for keys in cluster["keys"].values():
        data = json.loads(keys.key.read_text())
        secrets_ += [data["ed25519_seed"], data["mldsa65_seed"]]
        secrets_ += [keys.identity._ed25519_seed.hex(), keys.identity._mldsa_seed.hex()]
    texts = [agent.log_path.read_text() for agent in (cluster["a"], cluster["b"])]
    texts.append(json.dumps(state))
    for text in texts:
        for secret in secrets_:
            assert secret not in text


async def test_plain_source_is_rejected(cluster, clients) -> None:
    """A source that knows the one-time token but does not handshake gets nowhere."""
    _, cb = clients
    prepared = await cb.prepare_incoming(
        migration_id="plain1",
        info=MigrationSourceInfo(spec=VMSpec(name="plain1", memory_mib=64), page_count=16384),
        transport="tcp",
        codec="zlib",
        verify="pages",
    )
    raw = await TcpTransport().connect(Endpoint.model_validate(prepared["endpoint"]))
    try:
        hello = {"protocol": protocol.PROTOCOL_VERSION, "migration_id": "plain1"}
        await raw.send(protocol.pack_json(Msg.HELLO, hello | {"token": prepared["token"]}))
        # The answer is a handshake refusal, never a migration protocol frame.
        answer = await asyncio.wait_for(raw.recv(), 20)
        assert answer.startswith(b"NCQ1")
        assert b"did not answer with a NovaCron PQC handshake" in answer
        with pytest.raises(NovaCronError):
            await asyncio.wait_for(raw.recv(), 20)  # then the agent hangs up
    finally:
        await raw.close()
    # The agent logs right after it closed the connection.
    await logged(cluster["b"], "did not answer with a NovaCron PQC handshake")
    assert (await cb.incoming_state("plain1"))["state"] == "pending"


async def test_cli_migrate_authenticates_with_the_operator_key(cluster, clients) -> None:
    """`novacron migrate` gets its credentials from the security config (client_auth)."""
    ca, cb = clients
    await ca.create_vm(
        VMSpec(name="cli-secure", memory_mib=64, extra={"workload": {"pattern": "idle"}})
    )
    operator = cluster["keys"]["operator"]
    args = [arg for item in operator.settings() for arg in ("--set", item)]

    def migrate(*extra: str) -> subprocess.CompletedProcess[str]:
        cmd = [
            sys.executable,
            "-m",
            "novacron_sdk",
            *extra,
            "migrate",
            "cli-secure",
            "--from",
            cluster["a"].url,
            "--to",
            cluster["b"].url,
            "--no-progress",
        ]
        return subprocess.run(
            cmd, capture_output=True, text=True, env=ENV, timeout=120, check=False
        )

    anonymous = await asyncio.to_thread(migrate)
    assert anonymous.returncode == 2
    assert "auth" in anonymous.stderr.lower() or "401" in anonymous.stderr, anonymous.stderr
    result = await asyncio.to_thread(migrate, *args)
    assert result.returncode == 0, result.stderr
    assert "completed" in result.stdout
    moved = await cb.get_vm("cli-secure")
    assert moved.state is VMState.RUNNING
    await cb.destroy_vm(moved.id)


def novacron(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "novacron_sdk", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
        check=False,
    )


async def test_cli_status_authenticates_like_the_other_commands(cluster, tmp_path) -> None:
    url = cluster["a"].url
    operator = cluster["keys"]["operator"]
    args = [arg for item in operator.settings() for arg in ("--set", item)]
    secured = await asyncio.to_thread(novacron, *args, "status", "--agent", url, "--json")
    assert secured.returncode == 0, secured.stderr
    assert json.loads(secured.stdout)["host"]["name"] == "host-a"
    anonymous = await asyncio.to_thread(novacron, "status", "--agent", url)
    assert anonymous.returncode == 2
    assert anonymous.stderr == (
        f"error: the agent at {url} requires authentication: run with security enabled "
        "(--set security.enabled=true) and this node's key enrolled there "
        "(on the agent's host: novacron keys enroll NODE.pub)\n"
    )
    absent = tmp_path / "absent.key"
    keyless = [*args, "--set", f"security.identity_key={absent}"]
    without_key = await asyncio.to_thread(novacron, *keyless, "status", "--agent", url)
    assert without_key.returncode == 2
    assert without_key.stderr.startswith(
        "error: security is enabled, but this node's credentials cannot be loaded: "
        f"cannot read private key file {absent}"
    ), without_key.stderr
    assert "Components already started" not in without_key.stderr


@pytest.fixture(scope="module")
def mixed(cluster, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """An agent without security, and host-c: secured, trusting the operator but not host-a."""
    root = tmp_path_factory.mktemp("keys-c")
    c = make_keys(root, "host-c")
    EnrolledKeys(c.enrolled).enroll(cluster["keys"]["operator"].identity.public)
    with (
        LocalAgent("plain", env=ENV) as plain,
        LocalAgent("host-c", settings=c.settings(), env=ENV) as agent_c,
    ):
        yield {"plain": plain, "c": agent_c}


async def _refused_migration(source: AgentClient, vm_name: str, destination: str) -> str:
    """Start migrating a fresh VM from ``source``; the error it fails with, the VM left home."""
    vm = await source.create_vm(
        VMSpec(name=vm_name, memory_mib=64, extra={"workload": {"pattern": "idle"}})
    )
    try:
        with pytest.raises(NovaCronError) as caught:
            await source.start_migration(vm.id, destination)
        assert (await source.get_vm(vm.id)).state is VMState.RUNNING
    finally:
        await source.destroy_vm(vm.id)
    return str(caught.value)


async def test_secured_source_names_a_destination_without_security(cluster, clients, mixed) -> None:
    ca, _ = clients
    plain = mixed["plain"].url
    error = await _refused_migration(ca, "to-plain", plain)
    assert error == (
        f"agent {cluster['a'].url} reports: agent {plain} does not have security enabled "
        "(its API has no handshake endpoint /v1/auth/hello): enable security.enabled there, "
        "or disable it here"
    )


async def test_unsecured_source_is_told_to_enable_security(cluster, mixed) -> None:
    plain = mixed["plain"].url
    async with AgentClient(plain) as source:
        error = await _refused_migration(source, "from-plain", cluster["b"].url)
    assert error.startswith(
        f"agent {plain} reports: agent {cluster['b'].url}: authentication required: "
    ), error
    assert (
        "the caller (the novacron command, or the source agent of a migration) must run with "
        "security enabled (security.enabled=true) and its node key enrolled on this agent"
    ) in error


async def test_refusing_destination_is_named_as_where_to_enrol(cluster, clients, mixed) -> None:
    ca, _ = clients
    c = mixed["c"].url
    error = await _refused_migration(ca, "to-c", c)
    fingerprint = cluster["keys"]["a"].identity.public.fingerprint[:23]
    assert error == (
        f"agent {cluster['a'].url} reports: agent {c} refused the handshake: peer 'host-a' "
        f"({fingerprint}) is not enrolled on 'host-c'; to trust it, run on host-c: "
        "novacron keys enroll host-a.pub"
    )
