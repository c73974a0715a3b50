"""The SQLite state store: the contract suite, plus processes racing on one file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from novacron_sdk.builtin.sqlite_store import SqliteStore, StoreConfigError, default_path
from novacron_sdk.consensus.interface import Compare, Op, StateStore
from novacron_sdk.errors import ConfigError, StateStoreError
from novacron_sdk.plugin.manager import build_plugin_manager
from novacron_sdk.testing.store import StateStoreContract, collect, eventually


class TestSqliteContract(StateStoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[StateStore]:
        store = SqliteStore({"path": tmp_path / "state.db"})
        yield store
        await store.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore({"path": tmp_path / "state.db"})
    yield store
    await store.close()


RACER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from pathlib import Path
    from novacron_sdk.builtin.sqlite_store import SqliteStore
    from novacron_sdk.consensus.interface import Compare, Op

    async def main(path, go, name, increments):
        store = SqliteStore({"path": path})
        await store.get("warm-up")  # open the file before the start signal
        while not Path(go).exists():
            time.sleep(0.005)
        won = (await store.txn(
            [Compare(key="owner", target="version", op="==", value=0)],
            [Op(kind="put", key="owner", value=name.encode())],
        )).succeeded
        retries = 0
        for _ in range(increments):
            while True:
                kv = await store.get("counter")
                value = int(kv.value) if kv else 0
                cmp = Compare(key="counter", target="version", value=kv.version if kv else 0)
                put = Op(kind="put", key="counter", value=str(value + 1).encode())
                ok = await store.txn([cmp], [put])
                if ok.succeeded:
                    break
                retries += 1
        await store.close()
        print(json.dumps({"won": won, "retries": retries}))

    asyncio.run(main(*sys.argv[1:4], int(sys.argv[4])))
    """
)


@pytest.mark.slow
async def test_two_processes_race_on_one_file(tmp_path: Path) -> None:
    path, go = tmp_path / "state.db", tmp_path / "go"
    increments = 100
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(path), str(go), name, str(increments)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("p1", "p2")
    ]
    await asyncio.sleep(0.5)
    go.touch()
    outcomes = []
    try:
        for proc in procs:
            outcomes.append(await asyncio.to_thread(proc.communicate, timeout=120))
    finally:
        for proc in procs:  # a failed or hung racer must not leak its pipes into later tests
            if proc.returncode is None:
                proc.kill()
                proc.communicate()
    results = []
    for proc, (out, err) in zip(procs, outcomes, strict=True):
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    assert sorted(r["won"] for r in results) == [False, True]
    store = SqliteStore({"path": path})
    try:
        counter, owner = await store.get("counter"), await store.get("owner")
        assert counter is not None
        assert owner is not None
        assert counter.value == str(2 * increments).encode()
        assert counter.version == 2 * increments
        winner = "p1" if results[0]["won"] else "p2"
        assert owner.value == winner.encode()
    finally:
        await store.close()


async def test_watch_sees_writes_of_another_process(store: SqliteStore, tmp_path: Path) -> None:
    start = await store.revision() + 1
    writer = textwrap.dedent(
        """
        import asyncio, sys
        from novacron_sdk.builtin.sqlite_store import SqliteStore
        async def main():
            store = SqliteStore({"path": sys.argv[1]})
            await store.put("x/1", b"from another process")
            await store.delete("x/1")
            await store.close()
        asyncio.run(main())
        """
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", writer, str(store.path))
    assert await proc.wait() == 0
    events = await collect(store, "x/", start, 2)
    assert [(e.kind, e.value) for e in events] == [
        ("put", b"from another process"),
        ("delete", b""),
    ]


async def test_expired_lease_is_swept_for_other_processes_too(store: SqliteStore) -> None:
    other = SqliteStore({"path": store.path})
    try:
        lease = await store.grant_lease(0.3)
        await store.put("eph", b"v", lease=lease)
        await store.close()  # the owner vanishes without revoking

        async def gone() -> bool:
            return await other.get("eph") is None

        await eventually(gone, "expiry seen by another store on the same file")
    finally:
        await other.close()


async def test_background_sweeper_expires_without_traffic(tmp_path: Path) -> None:
    store = SqliteStore({"path": tmp_path / "s.db", "sweep_interval_s": 0.05})
    reader = SqliteStore({"path": tmp_path / "s.db"})
    try:
        lease = await store.grant_lease(0.2)
        await store.put("eph", b"v", lease=lease)

        async def swept() -> bool:
            # Read the changelog directly, so this store's own reads do no sweeping.
            rows = await asyncio.to_thread(_changelog_kinds, reader.path)
            return ("delete", "eph") in rows

        await eventually(swept, "a sweep by the background task")
    finally:
        await store.close()
        await reader.close()


def _changelog_kinds(path: Path) -> list[tuple[str, str]]:
    import sqlite3

    with sqlite3.connect(path) as db:
        return [(k, key) for k, key in db.execute("SELECT kind, key FROM changelog")]


async def test_refuses_memory_database() -> None:
    with pytest.raises(StateStoreError, match="memory"):
        SqliteStore({"path": ":memory:"})


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        # What YAML (a config file, --set) makes of an unquoted :memory:
        ({"path": {":memory": None}}, r"state\.settings\.path: YAML read the unquoted :memory:"),
        ({"path": 12}, r"state\.settings\.path must be a file path \(a string\), got 12; quote"),
        ({"path": ":memory:"}, r"':memory:' cannot be shared.*set state\.settings\.path"),
        ({"poll_interval_s": "fast"}, r"state\.settings\.poll_interval_s must be a number"),
        ({"poll_interval_s": 0}, r"poll_interval_s must be a number greater than 0, got 0"),
        ({"sweep_interval_s": -1}, r"sweep_interval_s must be a number at least 0, got -1"),
        ({"busy_timeout_s": True}, r"busy_timeout_s must be a number"),
        ({"history_revisions": 0.5}, r"history_revisions must be a whole number >= 1"),
    ],
)
def test_bad_settings_are_config_errors(settings: dict[str, object], problem: str) -> None:
    """ConfigError, so the agent does not retry; still a StateStoreError for old callers."""
    with pytest.raises(StoreConfigError, match=problem) as info:
        SqliteStore(settings)
    assert isinstance(info.value, ConfigError)
    assert isinstance(info.value, StateStoreError)


def _not_a_database(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("not a database, but long enough for sqlite to look at its header" * 20)
    return path


def _below_a_file(tmp_path: Path) -> Path:
    (tmp_path / "file").write_text("")
    return tmp_path / "file" / "state.db"


@pytest.mark.parametrize(
    ("make_path", "problem"),
    [
        (lambda tmp: Path("/proc/novacron/state.db"), "cannot create the directory /proc/novacron"),
        (lambda tmp: tmp, "cannot open or write .*is a directory"),
        (_not_a_database, "is not an SQLite database"),
        (_below_a_file, "cannot create the directory .*file: a file of that name exists"),
    ],
    ids=["uncreatable-directory", "directory", "not-a-database", "below-a-file"],
)
async def test_unusable_file_is_a_config_error(tmp_path: Path, make_path, problem: str) -> None:
    """A file that cannot be created, opened or written fails at once (no busy retries),
    naming the setting, the path and the reason."""
    path = make_path(tmp_path)
    # Busy retries (the bug) would go on for the whole busy_timeout_s: 60 s here, far past
    # the bound below, which only an error raised without retrying stays well within.
    store = SqliteStore({"path": path, "busy_timeout_s": 60})
    try:
        with pytest.raises(StoreConfigError, match=problem) as info:
            await asyncio.wait_for(store.get("k"), 20)
    finally:
        await store.close()
    message = str(info.value)
    assert message.startswith("state.settings.path: the sqlite state store")
    assert "set state.settings.path to" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write read-only files")
async def test_read_only_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = SqliteStore({"path": path})
    await first.put("k", b"v")
    await first.close()
    path.chmod(0o444)
    store = SqliteStore({"path": path})
    with pytest.raises(StoreConfigError, match=r"state\.settings\.path: .*cannot open or write"):
        await store.put("k", b"w")
    await store.close()


def test_status_cluster_explains_bad_paths(novacron_cli) -> None:
    """The walkthrough's commands: a clean error naming the setting, never 'unexpected'."""
    result = novacron_cli("--set", "state.settings.path=:memory:", "status", "--cluster")
    assert result.exit_code == 2
    assert "state.settings.path: YAML read the unquoted :memory:" in result.stderr
    result = novacron_cli("--set", "state.settings.path=/proc/novacron/s.db", "status", "--cluster")
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "error: state.settings.path: the sqlite state store cannot create the directory "
        "/proc/novacron ("
    )
    assert "unexpected" not in result.stderr


def test_default_path_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_path() == tmp_path / "novacron" / "state.db"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_path() == Path.home() / ".local" / "state" / "novacron" / "state.db"


async def test_data_survives_reopening(tmp_path: Path) -> None:
    first = SqliteStore({"path": tmp_path / "s.db"})
    rev = await first.put("k", b"v")
    await first.close()
    second = SqliteStore({"path": tmp_path / "s.db"})
    try:
        kv = await second.get("k")
        assert kv is not None
        assert kv.mod_revision == rev
        assert await second.put("k2", b"v") == rev + 1
    finally:
        await second.close()


async def test_revoke_unknown_lease_and_bad_ttl(store: SqliteStore) -> None:
    with pytest.raises(StateStoreError, match="does not exist"):
        await store.revoke_lease(12345)
    with pytest.raises(StateStoreError, match="positive"):
        await store.grant_lease(0)


async def test_compare_type_mismatch_is_reported(store: SqliteStore) -> None:
    with pytest.raises(StateStoreError, match="needs bytes"):
        await store.txn([Compare(key="k", target="value", value=3)], [])
    with pytest.raises(StateStoreError, match="needs an int"):
        await store.txn([Compare(key="k", target="version", value=b"3")], [])


async def test_failed_txn_rolls_back_everything(store: SqliteStore) -> None:
    rev = await store.put("a", b"1")
    with pytest.raises(StateStoreError, match="lease 999"):
        await store.txn(
            [], [Op(kind="put", key="b", value=b"2"), Op(kind="put", key="c", lease=999)]
        )
    assert await store.get("b") is None
    assert await store.revision() == rev


async def test_closed_store_refuses_work_and_ends_watches(store: SqliteStore) -> None:
    start = await store.put("w", b"1")
    stream = store.watch("w", start_revision=start)
    assert (await anext(stream)).key == "w"
    await store.close()
    await store.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(stream), 20)
    with pytest.raises(StateStoreError, match="closed"):
        await store.get("w")


async def test_watch_of_compacted_history_is_refused(tmp_path: Path) -> None:
    store = SqliteStore({"path": tmp_path / "s.db", "history_revisions": 10})
    try:
        for i in range(1030):
            await store.txn([], [Op(kind="put", key="k", value=str(i).encode())])
        with pytest.raises(StateStoreError, match="compacted"):
            await anext(store.watch("k", start_revision=1))
        recent = await store.revision()
        assert (await collect(store, "k", recent, 1))[0].value == b"1029"
    finally:
        await store.close()


def test_registered_as_sqlite() -> None:
    assert build_plugin_manager(autoload=False).state_stores.get("sqlite") is SqliteStore


def _hold_exclusive(
    path: Path, held: threading.Event, release: threading.Event, hold_s: float
) -> None:
    """Another connection that keeps every reader and writer out until ``release`` is set
    or ``hold_s`` has passed."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        db.execute("BEGIN EXCLUSIVE")
        db.execute("SELECT count(*) FROM kv").fetchone()
        held.set()
        release.wait(hold_s)
        db.execute("COMMIT")
    finally:
        db.close()


@contextlib.asynccontextmanager
async def _locked_out(
    path: Path, *, busy_timeout_s: float, hold_s: float = 60
) -> AsyncIterator[SqliteStore]:
    """A store on ``path`` (holding key k) while another connection keeps it locked: for
    ``hold_s``, or until the block ends."""
    first = SqliteStore({"path": path})
    await first.put("k", b"v")
    await first.close()
    store = SqliteStore({"path": path, "busy_timeout_s": busy_timeout_s})
    held, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_exclusive, args=(path, held, release, hold_s))
    holder.start()
    try:
        assert await asyncio.to_thread(held.wait, 20)
        yield store
    finally:
        release.set()
        await asyncio.to_thread(holder.join)
        await store.close()


@pytest.mark.parametrize("op", ["get", "put"])
async def test_waits_for_another_connections_lock(tmp_path: Path, op: str) -> None:
    async with _locked_out(tmp_path / "state.db", hold_s=0.5, busy_timeout_s=30) as store:
        if op == "get":
            kv = await store.get("k")
            assert kv is not None
            assert kv.value == b"v"
        else:
            assert await store.put("k", b"w") > 1


async def test_a_lock_held_past_the_busy_timeout_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with _locked_out(path, busy_timeout_s=0.2) as store:  # held until the block ends
        with pytest.raises(StateStoreError, match=r"write lock > 0\.2 s"):
            await store.get("k")
    reopened = SqliteStore({"path": path})
    try:
        kv = await reopened.get("k")
        assert kv is not None
        assert kv.value == b"v"
    finally:
        await reopened.close()
