"""pytest fixtures for tests against a real etcd cluster (imported by the DWCP conftest).

Imports pytest: only tests import this module. ``etcd_cluster`` is one 3-member cluster for
the session; ``etcd_fresh_cluster`` is a cluster of one test's own, free to be killed;
``etcd_store_factory`` makes stores in the test's own key namespace; ``etcd_tls_cluster`` is one
TLS member (client certificates required) and ``etcd_auth_cluster`` one member with user
authentication on, both for the session. Without an ``etcd``
binary every test that uses them is skipped, saying why.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from novacron_dwcp.consensus.etcd_store import EtcdStore
from novacron_dwcp.consensus.local_cluster import (
    LocalEtcdCluster,
    etcd_binary,
    make_certificates,
)

ETCD_SKIP_REASON = "etcd is not installed (apt-get install etcd-server); CI installs it"

EtcdStoreFactory = Callable[..., EtcdStore]


@pytest.fixture(scope="session")
def etcd_cluster() -> Iterator[LocalEtcdCluster]:
    """A 3-member etcd cluster shared by the session; tests that kill members use their own."""
    if etcd_binary() is None:
        pytest.skip(ETCD_SKIP_REASON)
    with LocalEtcdCluster(members=3) as cluster:
        yield cluster


@pytest.fixture
def etcd_fresh_cluster() -> Iterator[LocalEtcdCluster]:
    """A 3-member etcd cluster of this test alone, free to be killed."""
    if etcd_binary() is None:
        pytest.skip(ETCD_SKIP_REASON)
    with LocalEtcdCluster(members=3) as cluster:
        yield cluster


@pytest.fixture
async def etcd_store_factory(etcd_cluster: LocalEtcdCluster) -> AsyncIterator[EtcdStoreFactory]:
    """``etcd_store_factory("grpc", cluster=None, **settings)``: stores in this test's namespace.

    Every store of one test shares a fresh namespace, so tests never see each other's keys;
    stores are closed and the shared cluster's leases revoked afterwards.
    """
    namespace = f"/test/{uuid.uuid4().hex}/"
    stores: list[EtcdStore] = []

    def make(
        client: str = "grpc", cluster: LocalEtcdCluster | None = None, **settings: Any
    ) -> EtcdStore:
        store = EtcdStore(
            {
                "endpoints": (cluster or etcd_cluster).client_urls,
                "client": client,
                "namespace": namespace,
                "timeout_s": 5.0,
                **settings,
            }
        )
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()
    etcd_cluster.revoke_all_leases()


@pytest.fixture(scope="session")
def etcd_tls_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LocalEtcdCluster]:
    """A 1-member etcd cluster whose client port speaks TLS and requires client certificates
    (``cluster.tls`` holds the CA, and the client certificate and key to use)."""
    if etcd_binary() is None:
        pytest.skip(ETCD_SKIP_REASON)
    pytest.importorskip("cryptography", reason="the TLS tests make certificates with it")
    tls = make_certificates(tmp_path_factory.mktemp("etcd-tls"))
    with LocalEtcdCluster(members=1, tls=tls) as cluster:
        yield cluster


AUTH_USERS = {"novacron": ("s3cret-pass", "/auth/"), "other": ("other-pass", "/elsewhere/")}
"""Users of ``etcd_auth_cluster``: name: (password, the key prefix it may read and write)."""


@pytest.fixture(scope="session")
def etcd_auth_cluster() -> Iterator[LocalEtcdCluster]:
    """A 1-member etcd cluster with authentication on (root and ``AUTH_USERS``), whose simple
    tokens expire after 2 s without use (etcd's default is 300 s), so that tests meet expiry."""
    if etcd_binary() is None:
        pytest.skip(ETCD_SKIP_REASON)
    with LocalEtcdCluster(members=1, auth_token_ttl_s=2) as cluster:
        cluster.enable_auth("root-pass", AUTH_USERS)
        yield cluster
