"""The etcd store over TLS, with both clients, on a real etcd member whose client port speaks
TLS and requires client certificates (certificates made by the test: a CA, a server
certificate for 127.0.0.1, a client certificate).

The whole state-store contract runs over TLS; a wrong CA, a missing client certificate and
settings that cannot work give errors that say which setting to fix, without retrying until
the timeout.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from novacron_dwcp.consensus.etcd_store import EtcdStore
from novacron_dwcp.consensus.local_cluster import (
    LocalEtcdCluster,
    LocalEtcdTls,
    make_certificates,
)
from novacron_sdk.errors import ConfigError, StateStoreError
from novacron_sdk.testing.store import StateStoreContract

pytestmark = pytest.mark.slow

CLIENTS = ["grpc", "gateway"]
TIMEOUT_S = 10.0


def _tls(cluster: LocalEtcdCluster) -> LocalEtcdTls:
    assert cluster.tls is not None
    return cluster.tls


def _settings(cluster: LocalEtcdCluster, client: str, **extra: object) -> dict[str, object]:
    tls = _tls(cluster)
    settings: dict[str, object] = {
        "endpoints": cluster.client_urls,
        "client": client,
        "namespace": f"/tls-{time.monotonic_ns()}/",
        "timeout_s": TIMEOUT_S,
        "ca_file": str(tls.ca_file),
        "cert_file": str(tls.client_cert_file),
        "key_file": str(tls.client_key_file),
    }
    settings.update(extra)
    return {k: v for k, v in settings.items() if v is not None}


@pytest.fixture
async def tls_store_factory(
    etcd_tls_cluster: LocalEtcdCluster,
) -> AsyncIterator[Callable[..., EtcdStore]]:
    """``make(client, **settings)``: stores on the TLS member, closed afterwards."""
    stores: list[EtcdStore] = []

    def make(client: str, **extra: object) -> EtcdStore:
        store = EtcdStore(_settings(etcd_tls_cluster, client, **extra))
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


class TestEtcdGrpcOverTls(StateStoreContract):
    """aetcd's gRPC stubs on a TLS channel with a client certificate."""

    @pytest.fixture
    def store(self, tls_store_factory: Callable[..., EtcdStore]) -> EtcdStore:
        return tls_store_factory("grpc")


class TestEtcdGatewayOverTls(StateStoreContract):
    """etcd's JSON gateway over httpx, https with a client certificate."""

    @pytest.fixture
    def store(self, tls_store_factory: Callable[..., EtcdStore]) -> EtcdStore:
        return tls_store_factory("gateway")


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_member_certificate_from_another_ca_is_refused_at_once(
    client: str, tls_store_factory: Callable[..., EtcdStore], tmp_path: Path
) -> None:
    """Trusting another CA: the error names ca_file, and comes without waiting out
    timeout_s (another attempt would fail the same way)."""
    other = make_certificates(tmp_path / "other")
    store = tls_store_factory(client, ca_file=str(other.ca_file))
    started = time.monotonic()
    with pytest.raises(StateStoreError, match="ca_file") as caught:
        await store.put("/k", b"v")
    assert "failed verification" in str(caught.value)
    assert time.monotonic() - started < TIMEOUT_S, "retried until the timeout"


async def test_a_member_certificate_for_another_name_is_refused(tmp_path: Path) -> None:
    """The member's certificate, from the trusted CA, names etcd.example and not 127.0.0.1:
    both clients check the endpoint's address against it and refuse."""
    tls = make_certificates(tmp_path, server_dns="etcd.example")
    with LocalEtcdCluster(members=1, tls=tls) as cluster:
        for client in CLIENTS:
            store = EtcdStore(_settings(cluster, client))
            try:
                with pytest.raises(StateStoreError, match="failed verification"):
                    await store.put("/k", b"v")
            finally:
                await store.close()


@pytest.mark.parametrize("client", CLIENTS)
async def test_no_client_certificate_for_a_member_that_requires_one_says_so(
    client: str, tls_store_factory: Callable[..., EtcdStore]
) -> None:
    """The member runs with --client-cert-auth; the store has only the CA."""
    store = tls_store_factory(client, cert_file=None, key_file=None)
    started = time.monotonic()
    with pytest.raises(StateStoreError, match=r"cert_file and\s+key_file"):
        await store.put("/k", b"v")
    assert time.monotonic() - started < TIMEOUT_S, "retried until the timeout"


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_watch_over_tls_delivers_events(
    client: str, tls_store_factory: Callable[..., EtcdStore]
) -> None:
    """A watch (a stream, not a request) works over TLS too."""
    store = tls_store_factory(client)
    start = await store.put("w/0", b"0")
    await store.put("w/1", b"1")
    seen = []
    async for event in store.watch("w/", start_revision=start):
        seen.append((event.key, event.value))
        if len(seen) == 2:
            break
    assert seen == [("w/0", b"0"), ("w/1", b"1")]


def test_tls_settings_that_cannot_work_are_refused(tmp_path: Path) -> None:
    """Checked at construction, naming the setting (no member is contacted)."""
    tls = make_certificates(tmp_path)
    https = ["https://127.0.0.1:2379"]
    missing = str(tmp_path / "missing.pem")
    cases: list[tuple[dict[str, object], str]] = [
        ({"endpoints": ["http://127.0.0.1:2379"], "ca_file": str(tls.ca_file)}, "ca_file .*http://"),
        ({"endpoints": ["https://127.0.0.1:1", "http://127.0.0.1:2"]}, "mixes http:// and https://"),
        ({"endpoints": https, "ca_file": missing}, "ca_file: .* not a readable"),
        ({"endpoints": https, "cert_file": str(tls.client_cert_file)}, "cert_file and key_file"),
        ({"endpoints": https, "ca_file": str(tls.key_file)}, "do not load"),
    ]  # fmt: skip
    for settings, message in cases:
        for client in CLIENTS:
            with pytest.raises(ConfigError, match=message):
                EtcdStore({**settings, "client": client})


def test_the_etcd_example_runs(etcd_tls_cluster: LocalEtcdCluster) -> None:
    """``examples/etcd_cluster_state.py`` (its own TLS cluster; the fixture only makes the
    test skip where etcd is missing): both clients watch and elect over TLS."""
    example = Path(__file__).resolve().parents[3] / "examples" / "etcd_cluster_state.py"
    result = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    for client in CLIENTS:
        assert f"[{client}] watch: put hosts/host-a = up" in result.stdout
        assert f"[{client}] host-a leads the controller election: True" in result.stdout
