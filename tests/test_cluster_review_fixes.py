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
from typing import Any

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
from novacron_sdk.consensus.interface import WatchEvent
from novacron_sdk.errors import StateStoreError
from novacron_sdk.testing.store import eventually

CONTROLLER_KEY = f"{ELECTION_PREFIX}{CONTROLLER_ELECTION}"
KEPT_TTL_S = 3.0
"""The ttl of a lease that a keep-alive (every ttl/3) must keep: it survives a stall of the
event loop (a loaded machine) of well over a second. Leases that must expire keep a short ttl."""


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
    a = Election(cut_off, "controller", "host-a", ttl_s=1.5)
    b = Election(other, "controller", "host-b", ttl_s=1.5)
    waiting: asyncio.Task[None] | None = None
    try:
        await a.campaign()
        waiting = asyncio.create_task(b.campaign())
        await asyncio.sleep(0.1)
        cut_off.cut = True
        await asyncio.wait_for(waiting, 20)
        assert b.is_leader
        assert not a.is_leader, "two leaders: the cut-off one still believes it leads"
        # Its keep-alive gives up on the hung refresh at the same local deadline.
        await asyncio.wait_for(a.wait_lost(), 10)
    finally:
        if waiting is not None:
            waiting.cancel()
        await b.resign()
        await a.resign()
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
    try:
        # About one ttl (1 s); the bug kept the dead lease for the hour the clock went back.
        await asyncio.wait_for(b.campaign(), 20)
    finally:
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
    lease = await first.grant_lease(2)
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

        async def gone() -> bool:
            return await store.get("/k") is None

        # Within the bound (10 s) of a 2 s ttl; the bug's expiry, on that boot's clock, never.
        await eventually(gone, "the lease of an earlier boot expiring")
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

    a = ClusterController(store, "host-a", ttl_s=KEPT_TTL_S, on_elected=work)
    b = ClusterController(other, "host-b", ttl_s=KEPT_TTL_S)
    a.start()
    try:
        await asyncio.wait_for(a.wait_leading(), 20)
        b.start()
        await asyncio.wait_for(b.wait_leading(), 20)
        assert await current_controller(store) == "host-b"
        assert "controller work crashed" in caplog.text
        await b.stop()
        await asyncio.wait_for(a.wait_leading(), 20)  # a campaigns again
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

    a = ClusterController(store, "host-a", ttl_s=KEPT_TTL_S, on_elected=work)
    a.start()
    try:
        await asyncio.wait_for(a.wait_leading(), 20)
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
    watch = store.watch
    watching = asyncio.Event()

    async def watch_seen(*args: Any, **kwargs: Any) -> AsyncIterator[WatchEvent]:
        watching.set()
        async for event in watch(*args, **kwargs):
            yield event

    store.watch = watch_seen  # type: ignore[method-assign]
    a = Election(store, "controller", "host-a", ttl_s=10)
    b = Election(store, "controller", "host-b", ttl_s=10)
    waiting: asyncio.Task[None] | None = None
    try:
        await a.campaign()
        for i in range(1100):  # the store prunes at revision 1024
            await store.put("/novacron/other", str(i).encode())
        waiting = asyncio.create_task(b.campaign())
        # The bug failed the standby's watch on its first read: give that read a moment,
        # once the standby watches.
        await asyncio.wait_for(watching.wait(), 20)
        await asyncio.sleep(0.3)
        assert not waiting.done(), waiting.exception() if waiting.done() else None
        await a.resign()
        await asyncio.wait_for(waiting, 20)
        assert b.is_leader
    finally:
        if waiting is not None:
            waiting.cancel()
        await b.resign()
        await a.resign()
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
    read_at: list[int] = []  # the store revision of each of the watch's reads
    changes = store._changes

    def changes_seen(db: sqlite3.Connection, prefix: str, cursor: tuple[int, int]) -> Any:
        result = changes(db, prefix, cursor)
        read_at.append(result[1])
        return result

    store._changes = changes_seen  # type: ignore[method-assign]
    watch = store.watch("/quiet/")
    next_event = asyncio.create_task(anext(watch))
    try:
        for i in range(1100):  # the store prunes at revision 1024, up to revision 24
            await store.put("/busy/k", str(i).encode())
            if i == 100:

                async def read_past_24() -> bool:
                    return max(read_at, default=0) > 24

                # The watch has read past revision 24 (nothing under its prefix) before that
                # history is pruned.
                await eventually(read_past_24, "a read of the watch past revision 24")
        await store.put("/quiet/k", b"v")
        event = await asyncio.wait_for(next_event, 20)
        assert (event.key, event.value) == ("/quiet/k", b"v")
    finally:
        next_event.cancel()
        await asyncio.gather(next_event, return_exceptions=True)
        await watch.aclose()
        await store.close()
