"""The etcd store under member failures, on a real 3-member cluster of the test's own.

Killing one member (the leader) must not stop writes; killing two must make writes fail
with StateStoreError within the configured timeout; restarting must lose no acknowledged
write (checked key by key); a watch resumes on another member without losing events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from novacron_dwcp.consensus.etcd_store import EtcdStore
from novacron_dwcp.consensus.local_cluster import LocalEtcdCluster
from novacron_sdk.errors import StateStoreError

pytestmark = pytest.mark.slow

CLIENTS = ["grpc", "gateway"]


async def _current_leader(cluster: LocalEtcdCluster) -> int:
    for _ in range(200):
        leader = await asyncio.to_thread(cluster.leader)
        if leader is not None:
            return leader
        await asyncio.sleep(0.05)
    pytest.fail("the etcd cluster elected no leader")


@pytest.mark.parametrize("client", CLIENTS)
async def test_killing_one_member_writes_continue(
    client: str,
    etcd_fresh_cluster: LocalEtcdCluster,
    etcd_store_factory: Callable[..., EtcdStore],
) -> None:
    """Kill the leader and then the member the client used first: every write still lands."""
    store = etcd_store_factory(
        client, cluster=etcd_fresh_cluster, timeout_s=10.0, attempt_timeout_s=1.0
    )
    acknowledged: dict[str, bytes] = {}
    for i in range(60):
        if i == 20:
            etcd_fresh_cluster.kill(await _current_leader(etcd_fresh_cluster))
        key, value = f"k/{i:03d}", f"v{i}".encode()
        await store.put(key, value)
        acknowledged[key] = value
    found = {kv.key: kv.value for kv in await store.get_prefix("k/")}
    assert found == acknowledged


@pytest.mark.parametrize("client", CLIENTS)
async def test_killing_two_members_writes_fail_within_timeout(
    client: str,
    etcd_fresh_cluster: LocalEtcdCluster,
    etcd_store_factory: Callable[..., EtcdStore],
) -> None:
    """Without a majority a write raises StateStoreError, not later than the timeout allows."""
    timeout_s = 1.0
    healthy = etcd_store_factory(client, cluster=etcd_fresh_cluster, timeout_s=10.0)
    await healthy.put("before", b"ok")
    # A put to the member left waits for etcd's own request timeout (6 s with this cluster's
    # election timeout) unless the store gives up at its timeout_s: no attempt_timeout_s
    # shortens that attempt.
    store = etcd_store_factory(
        client, cluster=etcd_fresh_cluster, timeout_s=timeout_s, attempt_timeout_s=60.0
    )
    etcd_fresh_cluster.kill(1)
    etcd_fresh_cluster.kill(2)
    try:
        async with asyncio.timeout(timeout_s + 3.0):
            with pytest.raises(StateStoreError, match="majority"):
                await store.put("during", b"no quorum")
    except TimeoutError:
        pytest.fail(f"the put was still waiting {timeout_s + 3.0} s later (timeout_s={timeout_s})")


async def test_restart_loses_no_acknowledged_write(
    etcd_fresh_cluster: LocalEtcdCluster, etcd_store_factory: Callable[..., EtcdStore]
) -> None:
    """Writes acknowledged across one crash, a lost quorum and a crash of every member survive."""
    cluster = etcd_fresh_cluster
    patient = etcd_store_factory("grpc", cluster=cluster, timeout_s=10.0, attempt_timeout_s=1.0)
    hasty = etcd_store_factory("grpc", cluster=cluster, timeout_s=1.0)
    acknowledged: dict[str, bytes] = {}

    async def write_batch(tag: str, count: int, store: EtcdStore = patient) -> None:
        for i in range(count):
            key, value = f"w/{tag}/{i:03d}", f"{tag}-{i}".encode()
            try:
                await store.put(key, value)
            except StateStoreError:
                continue  # not acknowledged: not counted
            acknowledged[key] = value

    await write_batch("all-up", 40)
    cluster.kill(0)
    await write_batch("one-down", 40)
    cluster.kill(1)
    await write_batch("two-down", 2, hasty)  # no quorum: these fail, unacknowledged
    await asyncio.to_thread(cluster.restart, 0)
    await asyncio.to_thread(cluster.restart, 1)
    await write_batch("recovered", 40)
    for index in range(3):
        cluster.kill(index)
    for index in range(3):
        cluster.start_member(index)
    await asyncio.to_thread(cluster.wait_healthy)

    fresh = etcd_store_factory("gateway", cluster=cluster, timeout_s=10.0)
    for key, value in acknowledged.items():
        kv = await fresh.get(key)
        assert kv is not None, f"acknowledged write {key} was lost"
        assert kv.value == value
    assert not any(k.startswith("w/two-down/") for k in acknowledged)
    assert len(acknowledged) == 120


@pytest.mark.parametrize("client", CLIENTS)
async def test_watch_resumes_on_another_member(
    client: str,
    etcd_fresh_cluster: LocalEtcdCluster,
    etcd_store_factory: Callable[..., EtcdStore],
) -> None:
    """A watch whose member dies continues elsewhere with every event exactly once, in order."""
    cluster = etcd_fresh_cluster
    watcher = etcd_store_factory(client, cluster=cluster)
    # The writer talks to the members that stay up, so only the watch sees the failure.
    writer = etcd_store_factory(
        "gateway", cluster=cluster, endpoints=cluster.client_urls[1:], timeout_s=10.0
    )
    start = await writer.put("e/000", b"0")
    received: list[str] = []

    async def follow() -> None:
        async for event in watcher.watch("e/", start_revision=start):
            received.append(event.key)
            if len(received) == 40:
                return

    task = asyncio.create_task(follow())
    try:
        for i in range(1, 20):
            await writer.put(f"e/{i:03d}", b"x")
        cluster.kill(0)  # first member of the watcher's list: the one it is connected to
        for i in range(20, 40):
            await writer.put(f"e/{i:03d}", b"x")
        await asyncio.wait_for(task, 20)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert received == [f"e/{i:03d}" for i in range(40)]
