"""Cluster state on etcd: a local 3-member cluster over TLS, a key, a watch and an election.

Run it with ``python examples/etcd_cluster_state.py`` (needs the ``etcd`` binary: ``apt-get
install etcd-server``, and ``cryptography`` for the certificates). It makes a CA, a server
certificate for 127.0.0.1 and a client certificate in a temporary directory, starts three etcd
members whose client ports require client certificates, and uses the ``etcd`` state store
with both of its clients, as an agent configured with these settings would::

    state:
      store: etcd
      settings:
        endpoints: [https://127.0.0.1:PORT1, https://127.0.0.1:PORT2, https://127.0.0.1:PORT3]
        ca_file: .../ca.pem
        cert_file: .../client.pem
        key_file: .../client-key.pem
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from novacron_dwcp.consensus.etcd_store import EtcdStore
from novacron_dwcp.consensus.local_cluster import (
    LocalEtcdCluster,
    etcd_binary,
    make_certificates,
)
from novacron_sdk.consensus.election import Election
from novacron_sdk.errors import NovaCronError


async def use(cluster: LocalEtcdCluster, client: str) -> None:
    """A put, a watch that sees it, and an election, with one client."""
    tls = cluster.tls
    assert tls is not None
    store = EtcdStore(
        {
            "endpoints": cluster.client_urls,
            "client": client,
            "namespace": f"/example-{client}/",
            "ca_file": str(tls.ca_file),
            "cert_file": str(tls.client_cert_file),
            "key_file": str(tls.client_key_file),
        }
    )
    try:
        start = await store.put("hosts/host-a", b"up")
        async for event in store.watch("hosts/", start_revision=start):
            print(f"[{client}] watch: {event.kind} {event.key} = {event.value.decode()}")
            break
        election = Election(store, "controller", "host-a", ttl_s=5)
        await election.campaign()
        print(f"[{client}] host-a leads the controller election: {election.is_leader}")
        await election.resign()
    finally:
        await store.close()


def main() -> int:
    """Run the example; 1 with a message when etcd or cryptography is missing."""
    if etcd_binary() is None:
        print("etcd is not installed: apt-get install etcd-server", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as directory:
        try:
            tls = make_certificates(Path(directory))
        except ImportError:
            print("the example makes certificates with cryptography: pip install cryptography")
            return 1
        with LocalEtcdCluster(members=3, tls=tls) as cluster:
            print(f"etcd members (TLS, client certificates required): {cluster.client_urls}")
            try:
                for client in ("grpc", "gateway"):
                    asyncio.run(use(cluster, client))
            except NovaCronError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
