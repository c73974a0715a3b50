"""Cluster records on a real etcd cluster: racing destinations, controller, host leases."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from novacron_dwcp.consensus.etcd_store import EtcdStore
from novacron_sdk.cluster import (
    ClusterController,
    HostMembership,
    HostRecord,
    claim_vm,
    cluster_status,
    get_owner,
    list_hosts,
    record_owner,
)
from novacron_sdk.testing.store import eventually


async def test_two_destinations_racing_for_one_vm_exactly_one_wins(
    etcd_store_factory: Callable[..., EtcdStore],
) -> None:
    """Destinations on their own connections (gRPC and gateway) race, round after round."""
    source = etcd_store_factory("grpc")
    destinations = [etcd_store_factory("grpc"), etcd_store_factory("gateway")]
    for round_no in range(20):
        vm = f"vm-{round_no}"
        assert await record_owner(source, vm, "src")
        results = await asyncio.gather(
            *(claim_vm(d, vm, "src", f"dst-{i}") for i, d in enumerate(destinations))
        )
        assert sum(results) == 1, f"round {round_no}: {results}"
        owner = await get_owner(source, vm)
        assert owner is not None
        assert owner.host == f"dst-{results.index(True)}"


async def test_controller_election_over_etcd(etcd_store_factory: Callable[..., EtcdStore]) -> None:
    """One controller among three agents; it hands over when it stops."""
    controllers = [
        ClusterController(etcd_store_factory("grpc"), f"agent-{i}", ttl_s=3.0) for i in range(3)
    ]
    try:
        for controller in controllers:
            controller.start()

        async def one_leads() -> bool:
            return sum(c.is_leader for c in controllers) == 1

        await eventually(one_leads, "a controller election")
        first = next(c for c in controllers if c.is_leader)
        await first.stop()
        rest = [c for c in controllers if c is not first]

        async def handed_over() -> bool:
            return sum(c.is_leader for c in rest) == 1

        await eventually(handed_over, "controller hand-over")
        status = await cluster_status(rest[0].store)
        assert status.controller in {c.candidate_id for c in rest}
    finally:
        for controller in controllers:
            await controller.stop()


async def test_host_lease_expires_on_etcd(etcd_store_factory: Callable[..., EtcdStore]) -> None:
    """A host that stops refreshing disappears from the cluster when etcd expires its lease."""
    store = etcd_store_factory("grpc")
    member = HostMembership(store, HostRecord(name="h1"), ttl_s=2.0)
    await member.start()
    try:
        assert [h.name for h in await list_hosts(store)] == ["h1"]
        assert member._task is not None
        member._task.cancel()

        async def gone() -> bool:
            return await list_hosts(store) == []

        await eventually(gone, "expiry of the host lease")
    finally:
        await member.stop()
