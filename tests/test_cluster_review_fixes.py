"""Cluster state on the SQLite store: the fixes of a review, each reproduced as it was found.

Every test here failed before its fix. The fault injectors are named in each docstring;
everything else is real (SQLite files shared by two store objects, as two processes would).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from novacron_sdk.builtin.sqlite_store import SqliteStore
from novacron_sdk.cluster import (
    ClusterController,
    HostMembership,
    HostRecord,
    cluster_status,
    current_controller,
    list_hosts,
)
from novacron_sdk.cluster.keys import CONTROLLER_ELECTION
from novacron_sdk.consensus.election import ELECTION_PREFIX, Election
from novacron_sdk.errors import StateStoreError
from novacron_sdk.testing.store import eventually

CONTROLLER_KEY = f"{ELECTION_PREFIX}{CONTROLLER_ELECTION}"


@pytest.fixture
async def path(tmp_path: Path) -> Path:
    """The store file shared by the stores of one test."""
    return tmp_path / "state.db"


@pytest.fixture
async def store(path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore({"path": path})
    yield store
    await store.close()


@pytest.fixture
async def other(path: Path) -> AsyncIterator[SqliteStore]:
    """A second store on the same file: another process on the machine."""
    store = SqliteStore({"path": path})
    yield store
    await store.close()


class CutOffStore(SqliteStore):
    """Fault injector: while ``cut`` is set, lease refreshes hang without an answer or an
    error, as they do for a process cut off from its store (a partition, a hung member)."""

    cut = False

    async def refresh_lease(self, lease: int) -> None:
        """Hang while cut off; otherwise refresh."""
        if self.cut:
            await asyncio.Event().wait()
        await super().refresh_lease(lease)


# --- bug 2: a leader cut off from the store outlived its lease ------------------------------


async def test_cut_off_leader_stops_leading_before_another_is_elected(
    path: Path, other: SqliteStore
) -> None:
    """Fault injector: CutOffStore (refreshes hang). When the second candidate wins, the
    first must already have stopped leading: its local deadline ran out with the lease."""
    cut_off = CutOffStore({"path": path})
    try:
        a = Election(cut_off, "controller", "host-a", ttl_s=1.5)
        b = Election(other, "controller", "host-b", ttl_s=1.5)
        await a.campaign()
        waiting = asyncio.create_task(b.campaign())
        await asyncio.sleep(0.1)
        cut_off.cut = True
        await asyncio.wait_for(waiting, 10)
        assert b.is_leader
        assert not a.is_leader, "two leaders: the cut-off one still believes it leads"
        await asyncio.wait_for(a.wait_lost(), 0.5)
        await b.resign()
        await a.resign()
    finally:
        await cut_off.close()


async def test_term_is_the_election_keys_create_revision(store: SqliteStore) -> None:
    """Every won election has a greater term (fencing token) than the one before."""
    a = Election(store, "controller", "host-a", ttl_s=5)
    b = Election(store, "controller", "host-b", ttl_s=5)
    assert a.term is None
    await a.campaign()
    first = a.term
    kv = await store.get(a.key)
    assert kv is not None
    assert first == kv.create_revision
    await a.resign()
    assert a.term is None
    await b.campaign()
    assert b.term is not None
    assert b.term > first
    await b.resign()


# --- bug 1: leases timed by the wall clock --------------------------------------------------


@pytest.fixture
def wall_clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Fault injector: ``time.time`` patched to add ``offset[0]`` seconds (a clock step)."""
    real = time.time
    offset = [0.0]
    monkeypatch.setattr(time, "time", lambda: real() + offset[0])
    return offset


async def test_wall_clock_step_forward_ends_no_lease(
    store: SqliteStore, other: SqliteStore, wall_clock: list[float]
) -> None:
    """Fault injector: wall_clock (steps 60 s forward). No lease may end: the leader keeps
    the role, the waiting candidate keeps waiting, the live host stays registered."""
    a = Election(store, "controller", "host-a", ttl_s=10)
    b = Election(other, "controller", "host-b", ttl_s=10)
    member = HostMembership(store, HostRecord(name="host-a", url="http://127.0.0.1:1"), ttl_s=10)
    await member.start()
    await a.campaign()
    waiting = asyncio.create_task(b.campaign())
    try:
        await asyncio.sleep(0.2)
        wall_clock[0] = 60.0
        await asyncio.sleep(0.5)
        assert not waiting.done(), "a second controller was elected after a wall-clock step"
        assert a.is_leader
        assert await current_controller(other) == "host-a"
        assert [h.name for h in await list_hosts(other)] == ["host-a"]
    finally:
        waiting.cancel()
        await member.stop()
        await a.resign()


async def test_wall_clock_step_back_does_not_keep_a_dead_lease(
    path: Path, other: SqliteStore, wall_clock: list[float]
) -> None:
    """Fault injector: wall_clock (steps an hour back), then the leader's process dies (its
    store closed, nothing revoked). The other candidate is elected about one ttl later."""
    dying = SqliteStore({"path": path})
    a = Election(dying, "controller", "host-a", ttl_s=1)
    await a.campaign()
    wall_clock[0] = -3600.0
    await asyncio.sleep(0.1)
    await dying.close()  # the leader's process is gone; its lease is not revoked
    b = Election(other, "controller", "host-b", ttl_s=1)
    started = time.monotonic()
    await asyncio.wait_for(b.campaign(), 5)
    assert time.monotonic() - started < 3
    await b.resign()
    await a.resign()


def _edit(path: Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    """Fault injector: write the store file directly, as another boot or version left it."""
    db = sqlite3.connect(path)
    try:
        with db:
            for sql, args in statements:
                db.execute(sql, args)
    finally:
        db.close()


async def test_leases_of_an_earlier_boot_are_rebased(path: Path) -> None:
    """Fault injector: _edit (another boot id, and a lease expiry on that boot's clock far
    ahead of this boot's). The lease must last one ttl from the open, not that boot's time."""
    first = SqliteStore({"path": path})
    lease = await first.grant_lease(1)
    await first.put("/k", b"v", lease=lease)
    await first.close()
    _edit(
        path,
        ("UPDATE meta SET value = 'an-earlier-boot' WHERE name = 'boot_id'", ()),
        ("UPDATE leases SET expires_at = 1e10", ()),
    )
    store = SqliteStore({"path": path})
    try:
        assert await store.get("/k") is not None  # re-based to now + ttl, not expired
        started = time.monotonic()

        async def gone() -> bool:
            return await store.get("/k") is None

        await eventually(gone, "the lease of an earlier boot expiring")
        assert time.monotonic() - started < 3
    finally:
        await store.close()


async def test_file_of_an_earlier_version_is_migrated(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Fault injector: _edit (no boot id, wall-clock expiry: what earlier versions wrote).
    Opening it says so in the log and gives every lease one ttl on the boot clock."""
    first = SqliteStore({"path": path})
    lease = await first.grant_lease(30)
    await first.put("/k", b"v", lease=lease)
    await first.close()
    _edit(
        path,
        ("DELETE FROM meta WHERE name = 'boot_id'", ()),
        ("UPDATE leases SET expires_at = ? + ttl", (time.time(),)),
    )
    store = SqliteStore({"path": path})
    try:
        with caplog.at_level(logging.WARNING, logger="novacron_sdk.builtin.sqlite_store"):
            kv = await store.get("/k")
        assert kv is not None
        assert "migrated 1 lease(s) from wall-clock expiry" in caplog.text
        await store.refresh_lease(lease)
    finally:
        await store.close()


# --- bug 4: a failing on_elected held the role, then killed the campaign --------------------


async def test_failing_controller_work_gives_up_the_role(
    store: SqliteStore, other: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    """The work raises at once: the role goes to the other candidate, the first keeps
    campaigning, and stopping it raises nothing."""

    async def work() -> None:
        raise RuntimeError("controller work crashed")

    a = ClusterController(store, "host-a", ttl_s=1.5, on_elected=work)
    b = ClusterController(other, "host-b", ttl_s=1.5)
    a.start()
    try:
        await asyncio.wait_for(a.wait_leading(), 5)
        b.start()
        await asyncio.wait_for(b.wait_leading(), 5)
        assert await current_controller(store) == "host-b"
        assert "controller work crashed" in caplog.text
        await b.stop()
        await asyncio.wait_for(a.wait_leading(), 5)  # a campaigns again
    finally:
        await a.stop()
        await b.stop()


async def test_work_failing_on_cancellation_does_not_end_the_campaign(
    store: SqliteStore,
) -> None:
    """Fault injector: the lease revoked from outside (a store hiccup). The work raises when
    it is cancelled; the controller must campaign again, and stop() must not raise."""

    async def work() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    a = ClusterController(store, "host-a", ttl_s=1.5, on_elected=work)
    a.start()
    try:
        await asyncio.wait_for(a.wait_leading(), 5)
        kv = await store.get(CONTROLLER_KEY)
        assert kv is not None
        assert kv.lease is not None
        await store.revoke_lease(kv.lease)

        async def elected_again() -> bool:
            return a.terms == 2 and a.is_leader

        await eventually(elected_again, "the controller campaigning again")
    finally:
        await a.stop()


# --- bug 3: a standby could never campaign once the holder's revision was compacted ---------


async def test_standby_waits_although_the_holders_revision_was_compacted(path: Path) -> None:
    """history_revisions=1 stands for a long-lived leader: its election revision is pruned.
    The standby must wait for it, and win when it resigns."""
    store = SqliteStore({"path": path, "history_revisions": 1})
    try:
        a = Election(store, "controller", "host-a", ttl_s=10)
        await a.campaign()
        for i in range(1100):  # the store prunes at revision 1024
            await store.put("/novacron/other", str(i).encode())
        b = Election(store, "controller", "host-b", ttl_s=10)
        waiting = asyncio.create_task(b.campaign())
        await asyncio.sleep(0.3)
        assert not waiting.done(), waiting.exception() if waiting.done() else None
        await a.resign()
        await asyncio.wait_for(waiting, 5)
        assert b.is_leader
        await b.resign()
    finally:
        await store.close()


# --- bug 7: a corrupt controller key crashed cluster_status -----------------------------------


async def test_corrupt_controller_key_is_a_clear_error(store: SqliteStore) -> None:
    """A controller key that is not UTF-8 raises StateStoreError naming it, not a bare
    UnicodeDecodeError."""
    await store.put(CONTROLLER_KEY, b"\xff\xfe")
    with pytest.raises(StateStoreError, match=f"delete the key '{CONTROLLER_KEY}'"):
        await cluster_status(store)


# --- bug 6: the watch skipped history pruned while it ran ------------------------------------


async def test_watch_fails_when_undelivered_history_is_pruned(path: Path) -> None:
    """A slow consumer: history it has not read yet is pruned; the next read must raise."""
    store = SqliteStore({"path": path, "history_revisions": 10})
    try:
        await store.put("/w/k", b"0")
        watch = store.watch("/w/", start_revision=1)
        first = await anext(watch)
        assert first.revision == 1
        for i in range(1, 1100):  # the store prunes at revision 1024
            await store.put("/w/k", str(i).encode())
        with pytest.raises(StateStoreError, match="compacted"):
            await anext(watch)
        await watch.aclose()
    finally:
        await store.close()


async def test_quiet_watch_survives_pruning_of_other_keys(path: Path) -> None:
    """A watch on a quiet prefix whose consumer waits loses nothing when other keys'
    history is pruned, so it must not fail either."""
    store = SqliteStore({"path": path, "history_revisions": 1000})
    try:
        watch = store.watch("/quiet/")
        next_event = asyncio.create_task(anext(watch))
        for i in range(1100):  # the store prunes at revision 1024, up to revision 24
            await store.put("/busy/k", str(i).encode())
            if i == 100:
                await asyncio.sleep(0.3)  # the watch polls at least once past revision 24
        await store.put("/quiet/k", b"v")
        event = await asyncio.wait_for(next_event, 5)
        assert (event.key, event.value) == ("/quiet/k", b"v")
        await watch.aclose()
    finally:
        await store.close()
