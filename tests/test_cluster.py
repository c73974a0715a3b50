"""Cluster state on the SQLite store: host leases, controller election, VM ownership, status."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from novacron_sdk.builtin.sqlite_store import SqliteStore
from novacron_sdk.cluster import (
    ClusterController,
    HostMembership,
    HostRecord,
    claim_vm,
    cluster_status,
    current_controller,
    destination_fence,
    get_owner,
    list_hosts,
    record_owner,
    release_vm,
    source_fence,
)
from novacron_sdk.consensus.interface import TxnResult
from novacron_sdk.errors import ConfigError, StateStoreError
from novacron_sdk.testing.store import eventually

KEPT_TTL_S = 3.0
"""The ttl of a lease that a keep-alive (every ttl/3) must keep: it survives a stall of the
event loop (a loaded machine) of up to 2 s. Leases that must expire keep a short ttl."""


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore({"path": tmp_path / "state.db"})
    yield store
    await store.close()


async def test_host_registration_lives_with_its_lease(store: SqliteStore) -> None:
    """A registered host is listed while refreshed, and gone soon after refreshing stops."""
    member = HostMembership(store, HostRecord(name="h1", vcpus=8), ttl_s=KEPT_TTL_S)
    await member.start()
    try:
        await asyncio.sleep(KEPT_TTL_S + 1)  # past the ttl: only the keep-alive keeps it
        assert [h.name for h in await list_hosts(store)] == ["h1"]
        assert member._task is not None
        member._task.cancel()  # the agent dies without deregistering

        async def gone() -> bool:
            return await list_hosts(store) == []

        await eventually(gone, "expiry of the dead host's lease")
    finally:
        await member.stop()


async def test_host_reregisters_after_its_lease_expired(store: SqliteStore) -> None:
    """When the lease is lost anyway, the keep-alive registers the host again."""
    member = HostMembership(store, HostRecord(name="h1"), ttl_s=KEPT_TTL_S)
    await member.start()
    try:
        assert member.lease is not None
        await store.revoke_lease(member.lease)  # as if the store expired it during a pause

        async def back() -> bool:
            registered = [h.name for h in await list_hosts(store)] == ["h1"]
            return member.registrations == 2 and registered

        await eventually(back, "re-registration")
    finally:
        await member.stop()
    assert await list_hosts(store) == []


async def test_a_second_agent_with_the_same_name_is_refused(store: SqliteStore) -> None:
    """It waits out the first one's lease ttl (in case that one had died), then refuses,
    naming the other agent's URL; the first keeps its record."""
    first = HostMembership(store, HostRecord(name="h1", url="http://127.0.0.1:1"), ttl_s=KEPT_TTL_S)
    await first.start()
    try:
        second = HostMembership(store, HostRecord(name="h1", url="http://127.0.0.1:2"), ttl_s=0.6)
        with pytest.raises(ConfigError) as info:
            # It gives up after the first one's ttl and a second (4 s); the bound is for a hang.
            await asyncio.wait_for(second.start(), 30)
        message = str(info.value)
        assert "host name 'h1' is taken: another agent at http://127.0.0.1:1 on machine " in message
        assert message.endswith("give each agent its own agent.name (novacron agent --name)")
        assert [h.url for h in await list_hosts(store)] == ["http://127.0.0.1:1"]
        assert second.lease is None
    finally:
        await first.stop()
    assert await list_hosts(store) == []


async def test_a_restarted_agent_takes_its_name_back(store: SqliteStore) -> None:
    """An earlier run that died without deregistering: the new run (another port) waits
    for the dead run's lease to expire and registers; on the same URL it takes over at once."""
    dead = HostMembership(store, HostRecord(name="h1", url="http://127.0.0.1:1"), ttl_s=0.6)
    await dead.start()
    assert dead._task is not None
    dead._task.cancel()  # killed: no deregistration, the lease lives on for its ttl
    # A long ttl: a run that waited for this lease to expire (the bug) would not register
    # within the bound below (it gives up after 20 s), one that takes over at once does.
    restarted = HostMembership(store, HostRecord(name="h1", url="http://127.0.0.1:2"), ttl_s=30)
    await asyncio.wait_for(restarted.start(), 30)  # waits out the dead run's 0.6 s lease
    assert [h.url for h in await list_hosts(store)] == ["http://127.0.0.1:2"]
    assert restarted._task is not None
    restarted._task.cancel()  # killed too, with its 30 s lease alive

    same_url = HostMembership(store, HostRecord(name="h1", url="http://127.0.0.1:2"), ttl_s=30)
    try:
        # No wait for the 30 s lease: no live process can share its URL.
        await asyncio.wait_for(same_url.start(), 10)
        [host] = await list_hosts(store)
        assert host.instance == same_url.record.instance != restarted.record.instance
    finally:
        await same_url.stop()


async def test_reregistration_does_not_take_a_name_another_agent_took(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A paused agent whose lease expired finds its name taken: it warns, and keeps off."""
    caplog.set_level(logging.WARNING, logger="novacron_sdk.cluster.hosts")
    # Both kept alive: the other agent must keep the name while the paused one looks, and
    # the paused one must not look again (every ttl/3) before the other has taken it.
    paused = HostMembership(
        store, HostRecord(name="h1", url="http://127.0.0.1:1"), ttl_s=KEPT_TTL_S
    )
    other = HostMembership(store, HostRecord(name="h1", url="http://127.0.0.1:2"), ttl_s=KEPT_TTL_S)
    await paused.start()
    try:
        assert paused.lease is not None
        await store.revoke_lease(paused.lease)  # as if its lease expired during a pause
        await other.start()

        async def warned() -> bool:
            return "another agent (at http://127.0.0.1:2" in caplog.text

        await eventually(warned, "the paused agent's warning")
        assert [h.url for h in await list_hosts(store)] == ["http://127.0.0.1:2"]
        await other.stop()

        async def back() -> bool:  # the name is free again: the paused agent registers
            return [h.url for h in await list_hosts(store)] == ["http://127.0.0.1:1"]

        await eventually(back, "re-registration once the name is free")
    finally:
        await other.stop()
        await paused.stop()


async def test_one_controller_and_failover(store: SqliteStore) -> None:
    """Of three candidates exactly one leads; when it stops another takes over."""
    elected: list[str] = []

    def work(name: str) -> ClusterController:
        async def on_elected() -> None:
            elected.append(name)
            await asyncio.Event().wait()

        # Kept alive: a leader must not lose its lease to a stall (a third election).
        return ClusterController(store, name, ttl_s=KEPT_TTL_S, on_elected=on_elected)

    controllers = [work(f"agent-{i}") for i in range(3)]
    for controller in controllers:
        controller.start()
    waiting = [asyncio.create_task(c.wait_leading()) for c in controllers]
    try:
        await asyncio.wait_for(asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED), 20)
        leaders = [c for c in controllers if c.is_leader]
        assert len(leaders) == 1
        assert await current_controller(store) == leaders[0].candidate_id
        await leaders[0].stop()
        rest = [c for c in controllers if c is not leaders[0]]

        async def taken_over() -> bool:
            return sum(c.is_leader for c in rest) == 1 and len(elected) == 2

        await eventually(taken_over, "controller failover")
        assert await current_controller(store) in {c.candidate_id for c in rest}
        assert elected[0] == leaders[0].candidate_id
        assert len(elected) == 2
    finally:
        for task in waiting:
            task.cancel()
        for controller in controllers:
            await controller.stop()
    assert await current_controller(store) is None


async def test_racing_destinations_exactly_one_wins(store: SqliteStore) -> None:
    """Eight destinations claim one VM from its owner at once: one wins and owns it."""
    assert await record_owner(store, "vm-1", "src")
    results = await asyncio.gather(*(claim_vm(store, "vm-1", "src", f"dst-{i}") for i in range(8)))
    winners = [f"dst-{i}" for i, won in enumerate(results) if won]
    assert len(winners) == 1
    owner = await get_owner(store, "vm-1")
    assert owner is not None
    assert (owner.host, owner.epoch) == (winners[0], 2)


async def test_claim_needs_the_current_owner(store: SqliteStore) -> None:
    """A claim naming a host that no longer owns the VM loses; a source can fence itself."""
    assert await record_owner(store, "vm-1", "a")
    assert not await record_owner(store, "vm-1", "b")  # already owned
    assert await claim_vm(store, "vm-1", "a", "b")
    assert not await claim_vm(store, "vm-1", "a", "c")  # stale: b owns it now
    assert await claim_vm(store, "vm-1", "b", "b")  # rollback: b re-claims, bumping the epoch
    owner = await get_owner(store, "vm-1")
    assert owner is not None
    assert (owner.host, owner.epoch) == ("b", 3)
    assert not await release_vm(store, "vm-1", "a")
    assert await release_vm(store, "vm-1", "b")
    assert await get_owner(store, "vm-1") is None
    assert await claim_vm(store, "vm-2", "nobody", "d")  # unrecorded VM: first claim creates it


async def test_cluster_status_reads_the_store(store: SqliteStore) -> None:
    """Status lists live hosts, the controller, owners and VMs whose owner is gone."""
    member = HostMembership(store, HostRecord(name="h1", url="http://127.0.0.1:1"), ttl_s=5)
    controller = ClusterController(store, "h1", ttl_s=5)
    await member.start()
    try:
        controller.start()
        await asyncio.wait_for(controller.wait_leading(), 20)
        await record_owner(store, "vm-a", "h1")
        await record_owner(store, "vm-b", "h-dead")
        status = await cluster_status(store)
        assert status.store == "sqlite"
        assert status.controller == "h1"
        assert [h.name for h in status.hosts] == ["h1"]
        assert [(v.vm, v.host) for v in status.vms] == [("vm-a", "h1"), ("vm-b", "h-dead")]
        assert status.orphaned_vms == ["vm-b"]
    finally:
        await controller.stop()
        await member.stop()


class FlakyAfterCommitStore(SqliteStore):
    """A real SQLite store whose next ``txn`` applies and then reports a failure, as a
    connection broken after the server committed would."""

    fail_next_txn = False

    async def txn(self, compare: Any, success: Any, failure: Any = ()) -> TxnResult:
        result = await super().txn(compare, success, failure)
        if self.fail_next_txn:
            self.fail_next_txn = False
            msg = "connection lost after the transaction was sent"
            raise StateStoreError(msg)
        return result


async def test_claim_with_unknown_outcome_reads_its_token_back(tmp_path: Path) -> None:
    """A claim whose answer was lost still knows whether it won, from the record's token."""
    store = FlakyAfterCommitStore({"path": tmp_path / "state.db"})
    try:
        assert await record_owner(store, "vm-1", "src")
        store.fail_next_txn = True
        assert await claim_vm(store, "vm-1", "src", "dst")  # applied, answer lost: won
        assert not await claim_vm(store, "vm-1", "src", "other")  # src no longer owns it
        owner = await get_owner(store, "vm-1")
        assert owner is not None
        assert owner.host == "dst"
    finally:
        await store.close()


async def test_fences_at_switch_over(store: SqliteStore) -> None:
    """Two prepared destinations: one resumes; the rolling-back source then stays paused.
    Without a winning destination, the source's fence lets it resume and shuts them out."""
    assert await record_owner(store, "vm-1", "src")
    first = await destination_fence(store, "vm-1", "dst-1")
    second = await destination_fence(store, "vm-1", "dst-2")
    assert [await first(), await second()] == [True, False]
    assert not await source_fence(store, "vm-1", "src")()

    assert await record_owner(store, "vm-2", "src")
    late = await destination_fence(store, "vm-2", "dst-1")
    assert await source_fence(store, "vm-2", "src")()  # rollback wins first
    assert not await late()  # the destination's COMMIT arrives too late: no resume
    owner = await get_owner(store, "vm-2")
    assert owner is not None
    assert owner.host == "src"
