"""The contract every state store must pass: subclass :class:`StateStoreContract`.

Example::

    class TestSqliteContract(StateStoreContract):
        @pytest.fixture
        async def store(self, tmp_path):
            store = SqliteStore({"path": tmp_path / "state.db"})
            yield store
            await store.close()

The fixture must give an empty store per test. Lease tests wait for real expiry (ttl of a
fraction of a second, polled with a generous deadline), so a store must expire leases
within a second or two of their ttl.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable

import pytest

from novacron_sdk.consensus.interface import Compare, Op, StateStore, WatchEvent
from novacron_sdk.errors import StateStoreError
from novacron_sdk.testing import waiting

DEADLINE_S = 10.0


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after DEADLINE_S seconds."""
    await waiting.eventually(check, what, within_s=DEADLINE_S, every_s=0.05)


async def collect(
    store: StateStore, prefix: str, start: int | None, count: int
) -> list[WatchEvent]:
    """The first ``count`` events of a watch (with a deadline)."""
    events: list[WatchEvent] = []
    stream = store.watch(prefix, start_revision=start)

    async def run() -> None:
        async for event in stream:
            events.append(event)
            if len(events) == count:
                return

    try:
        await asyncio.wait_for(run(), DEADLINE_S)
    finally:
        await stream.aclose()  # type: ignore[attr-defined]  # async generators have it
    return events


class StateStoreContract:
    """Every state store must pass this. Subclass it and provide a ``store`` fixture."""

    async def test_put_get_and_revisions(self, store: StateStore) -> None:
        """Every write bumps the store revision; versions count writes to a key."""
        assert await store.get("k") is None
        r1 = await store.put("k", b"one")
        r2 = await store.put("other", b"x")
        r3 = await store.put("k", b"two")
        assert r1 < r2 < r3
        kv = await store.get("k")
        assert kv is not None
        assert (kv.key, kv.value, kv.version) == ("k", b"two", 2)
        assert (kv.create_revision, kv.mod_revision) == (r1, r3)
        assert kv.lease is None

    async def test_get_prefix_is_sorted_and_exact(self, store: StateStore) -> None:
        """Only keys under the prefix, sorted by key."""
        for key in ("vm/c", "vm/a", "vmx", "vm", "vm/b/1", "a", "vm/b"):
            await store.put(key, key.encode())
        keys = [kv.key for kv in await store.get_prefix("vm/")]
        assert keys == ["vm/a", "vm/b", "vm/b/1", "vm/c"]
        assert [kv.value for kv in await store.get_prefix("vm/b")] == [b"vm/b", b"vm/b/1"]
        assert await store.get_prefix("nothing/") == []

    async def test_delete_key_and_prefix(self, store: StateStore) -> None:
        """delete returns how many keys went; a deleted key starts again at version 1."""
        for key in ("h/1", "h/2", "h/3", "hx"):
            await store.put(key, b"v")
        assert await store.delete("h/1") == 1
        assert await store.delete("h/1") == 0
        assert await store.delete("h/", prefix=True) == 2
        assert [kv.key for kv in await store.get_prefix("h")] == ["hx"]
        await store.put("h/1", b"again")
        kv = await store.get("h/1")
        assert kv is not None
        assert kv.version == 1

    async def test_txn_create_if_absent(self, store: StateStore) -> None:
        """version == 0 means absent: the first create wins, the second reads the winner."""
        absent = [Compare(key="lock", target="version", op="==", value=0)]
        first = await store.txn(absent, [Op(kind="put", key="lock", value=b"a")])
        second = await store.txn(
            absent, [Op(kind="put", key="lock", value=b"b")], [Op(kind="get", key="lock")]
        )
        assert first.succeeded
        assert not second.succeeded
        assert [kv.value for kv in second.responses[0]] == [b"a"]
        assert second.revision == first.revision  # nothing was written

    async def test_txn_compare_value_version_and_mod_revision(self, store: StateStore) -> None:
        """Compares on value, version and mod_revision hold or fail as they should."""
        rev = await store.put("k", b"v1")

        async def holds(target: str, op: str, value: bytes | int) -> bool:
            cmp = Compare(key="k", target=target, op=op, value=value)
            return (await store.txn([cmp], [])).succeeded

        assert await holds("value", "==", b"v1")
        assert not await holds("value", "==", b"v2")
        assert await holds("value", "!=", b"v2")
        assert await holds("version", "==", 1)
        assert await holds("version", ">", 0)
        assert await holds("mod_revision", "==", rev)
        assert not await holds("mod_revision", "<", rev)
        assert await holds("create_revision", "==", rev)
        missing = Compare(key="missing", target="value", op="==", value=b"")
        assert not (await store.txn([missing], [])).succeeded

    async def test_txn_is_all_or_nothing(self, store: StateStore) -> None:
        """A successful txn applies every op at one revision; a failed one only ``failure``."""
        await store.put("a", b"1")
        result = await store.txn(
            [Compare(key="a", target="value", value=b"1")],
            [
                Op(kind="put", key="b", value=b"2"),
                Op(kind="delete", key="a"),
                Op(kind="get", key="b"),
            ],
        )
        assert result.succeeded
        assert [kv.value for kv in result.responses[2]] == [b"2"]
        b = await store.get("b")
        assert b is not None
        assert b.mod_revision == result.revision
        assert await store.get("a") is None
        failed = await store.txn(
            [Compare(key="a", target="version", op=">", value=0)],
            [Op(kind="put", key="c", value=b"no")],
            [Op(kind="put", key="d", value=b"yes")],
        )
        assert not failed.succeeded
        assert await store.get("c") is None
        assert await store.get("d") is not None

    async def test_racing_cas_writers_exactly_one_wins(self, store: StateStore) -> None:
        """Many writers race to create the same key: exactly one succeeds."""
        absent = [Compare(key="owner", target="version", op="==", value=0)]
        results = await asyncio.gather(
            *(
                store.txn(absent, [Op(kind="put", key="owner", value=str(i).encode())])
                for i in range(8)
            )
        )
        winners = [i for i, r in enumerate(results) if r.succeeded]
        assert len(winners) == 1
        owner = await store.get("owner")
        assert owner is not None
        assert owner.value == str(winners[0]).encode()

    async def test_cas_counter_loses_no_update(self, store: StateStore) -> None:
        """Concurrent compare-and-swap increments with retry add up exactly."""
        await store.put("n", b"0")

        async def increment() -> None:
            while True:
                kv = await store.get("n")
                assert kv is not None
                new = str(int(kv.value) + 1).encode()
                cmp = Compare(key="n", target="mod_revision", value=kv.mod_revision)
                if (await store.txn([cmp], [Op(kind="put", key="n", value=new)])).succeeded:
                    return

        await asyncio.gather(*(increment() for _ in range(10)))
        final = await store.get("n")
        assert final is not None
        assert final.value == b"10"

    async def test_lease_expiry_deletes_keys(self, store: StateStore) -> None:
        """Keys under a lease that is not refreshed disappear, with a delete event."""
        # 2 s: the key must still be there when read back, also on a loaded machine.
        lease = await store.grant_lease(2.0)
        await store.put("session/a", b"alive", lease=lease)
        rev = await store.put("session/b", b"no lease")
        kv = await store.get("session/a")
        assert kv is not None
        assert kv.lease == lease
        events = await collect(store, "session/", rev + 1, 1)
        assert (events[0].kind, events[0].key) == ("delete", "session/a")
        assert await store.get("session/a") is None
        assert await store.get("session/b") is not None
        with pytest.raises(StateStoreError):
            await store.refresh_lease(lease)

    async def test_refresh_keeps_keys(self, store: StateStore) -> None:
        """Refreshing a lease well within its ttl keeps its keys past the ttl."""
        lease = await store.grant_lease(3.0)
        await store.put("kept", b"v", lease=lease)
        for _ in range(10):  # 4 s in all, past the ttl; a refresh may come 2.6 s late
            await asyncio.sleep(0.4)
            await store.refresh_lease(lease)
        assert await store.get("kept") is not None

    async def test_revoke_deletes_keys_now(self, store: StateStore) -> None:
        """Revoking a lease deletes its keys at once."""
        lease = await store.grant_lease(60)
        await store.put("r/1", b"a", lease=lease)
        await store.put("r/2", b"b", lease=lease)
        await store.revoke_lease(lease)
        assert await store.get_prefix("r/") == []

    async def test_put_with_unknown_lease_fails(self, store: StateStore) -> None:
        """A put under a lease that does not exist is refused and writes nothing."""
        lease = await store.grant_lease(60)
        await store.revoke_lease(lease)
        with pytest.raises(StateStoreError):
            await store.put("k", b"v", lease=lease)
        assert await store.get("k") is None

    async def test_watch_sees_changes_in_order(self, store: StateStore) -> None:
        """A watch from a start revision replays, then follows, puts and deletes in order."""
        start = await store.put("w/a", b"1")
        task = asyncio.create_task(collect(store, "w/", start, 5))
        revs = [
            await store.put("w/b", b"2"),
            await store.put("elsewhere", b"x"),
            await store.put("w/b", b"3"),
        ]
        await store.delete("w/a")
        await store.delete("w/", prefix=True)
        events = await task
        assert [(e.kind, e.key, e.value) for e in events] == [
            ("put", "w/a", b"1"),
            ("put", "w/b", b"2"),
            ("put", "w/b", b"3"),
            ("delete", "w/a", b""),
            ("delete", "w/b", b""),
        ]
        assert [e.revision for e in events[:3]] == [start, revs[0], revs[2]]
        assert all(a.revision < b.revision for a, b in itertools.pairwise(events))
