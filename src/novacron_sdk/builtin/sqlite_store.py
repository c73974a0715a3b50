"""The builtin ``sqlite`` state store: etcd-like revisions, transactions, leases and watches
in one SQLite file (WAL mode), safe to share between processes on one machine.

Settings (all optional):

- ``path``: the database file; default ``$XDG_STATE_HOME/novacron/state.db`` or
  ``~/.local/state/novacron/state.db``. Missing directories are created. ``:memory:`` is
  refused: other processes could not see it.
- ``poll_interval_s`` (default 0.05): how often a watch looks for new changes.
- ``sweep_interval_s`` (default 0 = off): also expire leases from a background task. Expired
  leases are swept at the start of every operation and every idle watch poll anyway.
- ``busy_timeout_s`` (default 10): how long to wait for another process's write lock.
- ``history_revisions`` (default 100000): revisions of change history kept for watches.

Invalid settings, and a file that cannot be created, opened or written, raise
:class:`StoreConfigError` (a ConfigError: the agent does not retry it) naming the setting.

Every write runs in ``BEGIN IMMEDIATE`` so compares and operations are atomic across
processes. SQLite calls run in a worker thread (one connection per store, behind a lock) so
the event loop never blocks on the file lock.

Lease expiry is kept on the machine's boot clock (``CLOCK_BOOTTIME`` on Linux, else
``time.monotonic``; :func:`lease_clock`): it is shared by every process on the machine and
never jumps when the wall clock is stepped (NTP, a resumed VM), so a step neither ends every
lease at once nor keeps a dead holder's lease alive. That clock restarts at zero on a reboot:
the store records the boot id (``/proc/sys/kernel/random/boot_id``) in its ``meta`` table, and
a store opened after a reboot (another boot id) re-bases every lease to now + its ttl. A file
written by an earlier version (lease expiry on the wall clock, no boot id) is migrated the
same way on open, with a log message; do not run earlier versions on the file afterwards
(they would read every lease as expired).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from novacron_sdk.consensus.interface import (
    Compare,
    KeyValue,
    Op,
    StateStore,
    TxnResult,
    WatchEvent,
)
from novacron_sdk.errors import ConfigError, StateStoreError

T = TypeVar("T")
log = logging.getLogger(__name__)
_BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


def lease_clock() -> float:
    """Seconds on the clock that lease expiry uses: monotonic, shared by every process on the
    machine, counting time suspended (``CLOCK_BOOTTIME``; ``time.monotonic`` where that clock
    does not exist)."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is not None:
        return time.clock_gettime(boottime)
    return time.monotonic()


def boot_id() -> str:
    """This boot's id (Linux), or one derived from when the machine booted (elsewhere)."""
    try:
        return _BOOT_ID_PATH.read_text(encoding="ascii").strip()
    except OSError:
        # The wall-clock time of the boot, to the minute: stable unless the clock is stepped.
        return f"booted-at-{int((time.time() - lease_clock()) // 60)}"


class StoreConfigError(ConfigError, StateStoreError):
    """A setting of the sqlite store is invalid, or its file cannot be created, opened or
    written: a retry will not help, the setting must change."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('revision', 0), ('compacted', 0);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY, value BLOB NOT NULL, create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL, version INTEGER NOT NULL, lease INTEGER);
CREATE INDEX IF NOT EXISTS kv_lease ON kv (lease) WHERE lease IS NOT NULL;
CREATE TABLE IF NOT EXISTS changelog (
    revision INTEGER NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL,
    value BLOB NOT NULL, PRIMARY KEY (revision, seq));
CREATE TABLE IF NOT EXISTS leases (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ttl REAL NOT NULL, expires_at REAL NOT NULL);
"""
_KV_COLUMNS = "key, value, create_revision, mod_revision, version, lease"
_PREFIX_WHERE = "key >= ? AND substr(key, 1, ?) = ?"
_PRUNE_EVERY = 1024
_WATCH_BATCH = 512
_ALL_SEQ = 1 << 62  # a cursor's seq once every change of its revision was delivered


def default_path() -> Path:
    """``$XDG_STATE_HOME/novacron/state.db``, or ``~/.local/state/novacron/state.db``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "novacron" / "state.db"


def _is_busy(exc: sqlite3.Error) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED (with any extended code): another connection's lock."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc)


def _path_setting(value: Any) -> Path:
    if not value:
        return default_path()
    if isinstance(value, dict) and list(value) == [":memory"]:
        # What YAML makes of an unquoted ``:memory:`` (in a file or in --set).
        msg = (
            "state.settings.path: YAML read the unquoted :memory: as a mapping (quote such "
            "values: path: ':memory:' in a file, --set \"state.settings.path=':memory:'\"), "
            "but the sqlite state store cannot use ':memory:' anyway: other processes could "
            "not see it; set a file path, e.g. /var/lib/novacron/state.db"
        )
        raise StoreConfigError(msg)
    if not isinstance(value, str | os.PathLike):
        msg = (
            f"state.settings.path must be a file path (a string), got {value!r}; quote it "
            "if YAML read it as something else: path: '...' in a file, "
            "--set \"state.settings.path='...'\""
        )
        raise StoreConfigError(msg)
    if os.fspath(value) == ":memory:":
        msg = (
            "the sqlite state store needs a file path: ':memory:' cannot be shared between "
            "processes; set state.settings.path to a file, e.g. /var/lib/novacron/state.db"
        )
        raise StoreConfigError(msg)
    return Path(value).expanduser()


def _number_setting(
    settings: Mapping[str, Any], key: str, default: float, *, minimum: float, strict: bool
) -> float:
    value = settings.get(key, default)
    bad = isinstance(value, bool) or not isinstance(value, int | float)
    if bad or not (value > minimum if strict else value >= minimum):
        bound = f"{'greater than' if strict else 'at least'} {minimum:g}"
        msg = f"state.settings.{key} must be a number {bound}, got {value!r}"
        raise StoreConfigError(msg)
    return float(value)


def _os_reason(path: Path) -> str | None:
    """Why the OS will not let this process write ``path`` (sqlite3 does not say), if known."""
    if path.is_dir():
        return f"{path} is a directory"
    if path.exists():
        try:
            os.close(os.open(path, os.O_RDWR))
        except OSError as exc:
            return str(exc)
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return f"no permission to write in the directory {path.parent}"
    return None


def _open_failed(path: Path, exc: OSError | sqlite3.Error) -> StoreConfigError:
    """The StoreConfigError for a store file that cannot be created, opened or written."""
    if isinstance(exc, FileExistsError):
        problem = f"cannot create the directory {path.parent}: a file of that name exists"
        todo = "a file in a directory"
    elif isinstance(exc, OSError):
        problem = f"cannot create the directory {path.parent} ({exc})"
        todo = "a file in an existing, writable directory (or one this user may create)"
    elif getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_NOTADB:
        problem = f"{path} is not an SQLite database ({exc})"
        todo = "a new file, or the file of an existing state store"
    else:
        reason = _os_reason(path)
        problem = f"cannot open or write {path} ({exc}{f': {reason}' if reason else ''})"
        todo = "a file this user may read and write, in a directory it may write"
    msg = (
        f"state.settings.path: the sqlite state store {problem}; set state.settings.path to {todo}"
    )
    return StoreConfigError(msg)


def _prefix_args(prefix: str) -> tuple[str, int, str]:
    return (prefix, len(prefix), prefix)


def _kv(row: sqlite3.Row | tuple[Any, ...]) -> KeyValue:
    key, value, create, mod, version, lease = row
    return KeyValue(
        key=key,
        value=bytes(value),
        create_revision=create,
        mod_revision=mod,
        version=version,
        lease=lease,
    )


class _Writer:
    """One write transaction: bumps the store revision once, on its first change."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.revision: int | None = None
        self._seq = 0

    def current(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()
        return int(row[0])

    def _change(self, kind: str, key: str, value: bytes) -> int:
        if self.revision is None:
            self.db.execute("UPDATE meta SET value = value + 1 WHERE name = 'revision'")
            self.revision = self.current()
        self._seq += 1
        self.db.execute(
            "INSERT INTO changelog VALUES (?, ?, ?, ?, ?)",
            (self.revision, self._seq, kind, key, value),
        )
        return self.revision

    def put(self, key: str, value: bytes, lease: int | None) -> int:
        if (
            lease is not None
            and not self.db.execute("SELECT 1 FROM leases WHERE id = ?", (lease,)).fetchone()
        ):
            msg = f"lease {lease} does not exist or has expired; grant a new one"
            raise StateStoreError(msg)
        revision = self._change("put", key, value)
        self.db.execute(
            "INSERT INTO kv VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT (key) DO UPDATE SET "
            "value = excluded.value, mod_revision = excluded.mod_revision, "
            "version = version + 1, lease = excluded.lease",
            (key, value, revision, revision, lease),
        )
        return revision

    def delete_keys(self, keys: Sequence[str]) -> int:
        for key in keys:
            self._change("delete", key, b"")
            self.db.execute("DELETE FROM kv WHERE key = ?", (key,))
        return len(keys)

    def delete(self, key: str, *, prefix: bool) -> int:
        if prefix:
            rows = self.db.execute(
                f"SELECT key FROM kv WHERE {_PREFIX_WHERE} ORDER BY key",  # noqa: S608 - constant
                _prefix_args(key),
            ).fetchall()
        else:
            rows = self.db.execute("SELECT key FROM kv WHERE key = ?", (key,)).fetchall()
        return self.delete_keys([r[0] for r in rows])

    def sweep(self, now: float) -> None:
        """Delete expired leases and their keys (logged as delete events)."""
        expired = [
            r[0] for r in self.db.execute("SELECT id FROM leases WHERE expires_at <= ?", (now,))
        ]
        for lease in expired:
            self.revoke(lease)

    def revoke(self, lease: int) -> bool:
        keys = self.db.execute("SELECT key FROM kv WHERE lease = ? ORDER BY key", (lease,))
        self.delete_keys([r[0] for r in keys.fetchall()])
        return self.db.execute("DELETE FROM leases WHERE id = ?", (lease,)).rowcount > 0


def get_rows(db: sqlite3.Connection, key: str, *, prefix: bool) -> list[KeyValue]:
    """The key, or every key under the prefix, sorted."""
    if prefix:
        sql = f"SELECT {_KV_COLUMNS} FROM kv WHERE {_PREFIX_WHERE} ORDER BY key"  # noqa: S608
        return [_kv(r) for r in db.execute(sql, _prefix_args(key))]
    sql = f"SELECT {_KV_COLUMNS} FROM kv WHERE key = ?"  # noqa: S608 - constant columns
    return [_kv(r) for r in db.execute(sql, (key,))]


def compare_holds(db: sqlite3.Connection, cmp: Compare) -> bool:
    """Evaluate one compare as etcd does: an absent key has version/revisions 0, no value."""
    rows = get_rows(db, cmp.key, prefix=False)
    kv = rows[0] if rows else None
    if cmp.target == "value":
        if not isinstance(cmp.value, bytes):
            msg = f"compare on the value of {cmp.key!r} needs bytes, got {cmp.value!r}"
            raise StateStoreError(msg)
        if kv is None:
            return False
        actual: bytes | int = kv.value
    else:
        if isinstance(cmp.value, bytes):
            msg = f"compare on the {cmp.target} of {cmp.key!r} needs an int, got bytes"
            raise StateStoreError(msg)
        actual = getattr(kv, cmp.target) if kv is not None else 0
    expected = cmp.value
    if cmp.op == "==":
        return actual == expected
    if cmp.op == "!=":
        return actual != expected
    if cmp.op == "<":
        return actual < expected  # type: ignore[operator]  # both bytes or both int
    return actual > expected  # type: ignore[operator]


class SqliteStore(StateStore):
    """StateStore over one SQLite file in WAL mode; see the module docstring for settings."""

    name = "sqlite"

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.path = _path_setting(self.settings.get("path"))
        number = partial(_number_setting, self.settings)
        self.poll_interval = number("poll_interval_s", 0.05, minimum=0, strict=True)
        self.sweep_interval = number("sweep_interval_s", 0, minimum=0, strict=False)
        self.busy_timeout = number("busy_timeout_s", 10, minimum=0, strict=False)
        history = self.settings.get("history_revisions", 100_000)
        if isinstance(history, bool) or not isinstance(history, int) or history < 1:
            msg = f"state.settings.history_revisions must be a whole number >= 1, got {history!r}"
            raise StoreConfigError(msg)
        self.history = history
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._sweeper: asyncio.Task[None] | None = None

    # -- plumbing ------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        """Open the file (creating it, its directory and the schema) on first use.

        A directory that cannot be created, or a file that cannot be opened or written (read
        only, a directory, not a database), raises StoreConfigError; SQLITE_BUSY is raised
        as it is, for :meth:`_locked` to retry.
        """
        if self._db is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _open_failed(self.path, exc) from exc
            try:
                db = sqlite3.connect(
                    self.path,
                    timeout=self.busy_timeout,
                    isolation_level=None,
                    check_same_thread=False,
                )
            except sqlite3.Error as exc:
                if _is_busy(exc):
                    raise
                raise _open_failed(self.path, exc) from exc
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                # In one write transaction so that processes opening a new file together agree.
                db.executescript("BEGIN IMMEDIATE;" + _SCHEMA)
                try:
                    self._rebase_leases(db)
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                db.close()
                if _is_busy(exc):
                    raise
                raise _open_failed(self.path, exc) from exc
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    def _rebase_leases(self, db: sqlite3.Connection) -> None:
        """After a reboot (or on a file of an earlier version), every lease to now + its ttl.

        The lease clock restarts on a reboot, so expiry times of an earlier boot mean nothing;
        files of earlier versions hold wall-clock expiry times. Runs in the open transaction.
        """
        current = boot_id()
        row = db.execute("SELECT value FROM meta WHERE name = 'boot_id'").fetchone()
        recorded = None if row is None else str(row[0])
        if recorded == current:
            return
        moved = db.execute("UPDATE leases SET expires_at = ? + ttl", (lease_clock(),)).rowcount
        db.execute("INSERT OR REPLACE INTO meta VALUES ('boot_id', ?)", (current,))
        if recorded is None and moved:
            log.warning(
                "sqlite store %s: migrated %d lease(s) from wall-clock expiry (earlier "
                "versions) to the boot clock; each now expires one ttl from now. Do not open "
                "this file with an earlier version of novacron any more",
                self.path,
                moved,
            )
        elif moved:
            log.info(
                "sqlite store %s: the machine rebooted since the last use (boot id %s, was %s);"
                " %d lease(s) now expire one ttl from now",
                self.path,
                current,
                recorded,
                moved,
            )

    def _locked(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the connection, retrying while another process holds a lock.

        SQLite's own busy handler covers most waits, but some lock states return
        SQLITE_BUSY at once (two processes creating or converting a new file to WAL
        together, a closing connection checkpointing the WAL): those are retried here, with
        backoff, until ``busy_timeout_s`` has passed.
        """
        with self._lock:
            deadline = time.monotonic() + self.busy_timeout
            delay = 0.005
            while True:
                if self._closed:
                    msg = f"sqlite store {self.path} is closed"
                    raise StateStoreError(msg)
                try:
                    return fn(self._connect())
                except sqlite3.Error as exc:
                    if self._db is not None and self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    busy = _is_busy(exc)
                    if busy and time.monotonic() + delay < deadline:
                        time.sleep(delay)
                        delay = min(delay * 2, 0.1)
                        continue
                    msg = f"sqlite store {self.path} failed: {exc}"
                    if busy:
                        msg += f" (another process held the write lock > {self.busy_timeout} s)"
                    raise StateStoreError(msg) from exc

    def _write_sync(self, fn: Callable[[_Writer], T]) -> T:
        def run(db: sqlite3.Connection) -> T:
            db.execute("BEGIN IMMEDIATE")
            try:
                writer = _Writer(db)
                writer.sweep(lease_clock())
                result = fn(writer)
                if writer.revision is not None and writer.revision % _PRUNE_EVERY == 0:
                    self._prune(db, writer.revision)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

        return self._locked(run)

    def _read_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run(db: sqlite3.Connection) -> T:
            db.execute("BEGIN")
            try:
                return fn(db)
            finally:
                db.execute("COMMIT")

        if self._locked(self._has_expired):
            self._write_sync(lambda _w: None)
        return self._locked(run)

    @staticmethod
    def _has_expired(db: sqlite3.Connection) -> bool:
        sql = "SELECT 1 FROM leases WHERE expires_at <= ? LIMIT 1"
        return db.execute(sql, (lease_clock(),)).fetchone() is not None

    def _prune(self, db: sqlite3.Connection, revision: int) -> None:
        floor = revision - self.history
        if floor > 0:
            db.execute("DELETE FROM changelog WHERE revision <= ?", (floor,))
            db.execute("UPDATE meta SET value = max(value, ?) WHERE name = 'compacted'", (floor,))

    async def _write(self, fn: Callable[[_Writer], T]) -> T:
        self._start_sweeper()
        return await asyncio.to_thread(self._write_sync, fn)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self._start_sweeper()
        return await asyncio.to_thread(self._read_sync, fn)

    def _start_sweeper(self) -> None:
        if self.sweep_interval > 0 and self._sweeper is None and not self._closed:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.sweep_interval)
            with contextlib.suppress(StateStoreError):
                await asyncio.to_thread(self._write_sync, lambda _w: None)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    # -- the StateStore API --------------------------------------------------------------
    async def revision(self) -> int:
        """The current store revision."""
        return await self._read(lambda db: _Writer(db).current())

    async def get(self, key: str) -> KeyValue | None:
        """The key, or None."""
        rows = await self._read(lambda db: get_rows(db, key, prefix=False))
        return rows[0] if rows else None

    async def get_prefix(self, prefix: str) -> list[KeyValue]:
        """All keys under ``prefix``, sorted by key."""
        return await self._read(lambda db: get_rows(db, prefix, prefix=True))

    async def put(self, key: str, value: bytes, *, lease: int | None = None) -> int:
        """Write; returns the new store revision."""
        return await self._write(lambda w: w.put(key, bytes(value), lease))

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        """Delete the key (or prefix); returns how many keys were deleted."""
        return await self._write(lambda w: w.delete(key, prefix=prefix))

    async def txn(
        self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        """Apply ``success`` if every compare holds, else ``failure``, in one transaction.

        ``responses`` has one entry per applied op, in order: what a ``get`` read, empty for
        ``put`` and ``delete``. ``revision`` is the store revision after the transaction.
        """

        def run(w: _Writer) -> TxnResult:
            ok = all(compare_holds(w.db, c) for c in compare)
            responses: list[tuple[KeyValue, ...]] = []
            for op in success if ok else failure:
                if op.kind == "put":
                    w.put(op.key, op.value, op.lease)
                    responses.append(())
                elif op.kind == "delete":
                    w.delete(op.key, prefix=op.prefix)
                    responses.append(())
                else:
                    responses.append(tuple(get_rows(w.db, op.key, prefix=op.prefix)))
            return TxnResult(succeeded=ok, revision=w.current(), responses=tuple(responses))

        return await self._write(run)

    async def grant_lease(self, ttl_s: float) -> int:
        """A new lease id that expires ``ttl_s`` seconds from now unless refreshed."""
        if not ttl_s > 0:
            msg = f"lease ttl must be positive, got {ttl_s}"
            raise StateStoreError(msg)

        def run(w: _Writer) -> int:
            cur = w.db.execute(
                "INSERT INTO leases (ttl, expires_at) VALUES (?, ?)",
                (ttl_s, lease_clock() + ttl_s),
            )
            return int(cur.lastrowid or 0)

        return await self._write(run)

    async def refresh_lease(self, lease: int) -> None:
        """Extend the lease by its ttl; StateStoreError if it already expired."""

        def run(w: _Writer) -> None:
            cur = w.db.execute(
                "UPDATE leases SET expires_at = ? + ttl WHERE id = ?", (lease_clock(), lease)
            )
            if cur.rowcount == 0:
                msg = f"lease {lease} has expired or was revoked; its keys are gone"
                raise StateStoreError(msg)

        await self._write(run)

    async def revoke_lease(self, lease: int) -> None:
        """Expire the lease now, deleting its keys; StateStoreError if it is unknown."""

        def run(w: _Writer) -> None:
            if not w.revoke(lease):
                msg = f"lease {lease} does not exist (expired or already revoked)"
                raise StateStoreError(msg)

        await self._write(run)

    async def watch(
        self, prefix: str, *, start_revision: int | None = None
    ) -> AsyncIterator[WatchEvent]:
        """Changes under ``prefix`` from ``start_revision`` on (inclusive, as in etcd).

        With None the watch starts at the revision after the current one when iteration
        starts (the first ``__anext__``); pass a revision to be sure not to miss a change.
        Events come in revision order; iteration ends when the store is closed. When history
        the watch has not delivered yet is pruned (``history_revisions``), at the start or
        while it runs (a slow consumer), it raises StateStoreError saying so, as etcd does:
        re-read the keys and watch again from a newer revision.
        """
        first = start_revision if start_revision is not None else await self.revision() + 1
        cursor = (first - 1, _ALL_SEQ)
        while not self._closed:
            try:
                rows, revision, compacted = await self._read(
                    partial(self._changes, prefix=prefix, cursor=cursor)
                )
            except StateStoreError:
                if self.closed:
                    return
                raise
            done_rev, done_seq = cursor
            if done_rev < compacted or (done_rev == compacted and done_seq != _ALL_SEQ):
                if done_rev == first - 1:
                    msg = (
                        f"revision {first} was compacted (history starts at {compacted + 1}); "
                        "re-read the keys and watch from a newer revision"
                    )
                else:
                    msg = (
                        f"watch on {prefix!r}: revisions up to {compacted} were compacted "
                        f"before it delivered them (it had delivered up to revision {done_rev}; "
                        "the consumer is slower than history_revisions allows); re-read the "
                        "keys and watch again from a newer revision"
                    )
                raise StateStoreError(msg)
            for event_revision, seq, kind, key, value in rows:
                cursor = (event_revision, seq)
                yield WatchEvent(kind=kind, key=key, value=bytes(value), revision=event_revision)
            if len(rows) < _WATCH_BATCH:
                # Everything up to the revision of that read was delivered: history pruned
                # later below it (other keys' changes) loses nothing of this watch.
                cursor = max(cursor, (revision, _ALL_SEQ))
                await asyncio.sleep(self.poll_interval)

    @staticmethod
    def _changes(
        db: sqlite3.Connection, prefix: str, cursor: tuple[int, int]
    ) -> tuple[list[tuple[int, int, str, str, bytes]], int, int]:
        """Changes after ``cursor``, with the store and compacted revisions of the same read."""
        sql = (
            "SELECT revision, seq, kind, key, value FROM changelog "  # noqa: S608 - constant
            f"WHERE (revision > ? OR (revision = ? AND seq > ?)) AND {_PREFIX_WHERE} "
            "ORDER BY revision, seq LIMIT ?"
        )
        rev, seq = cursor
        rows = db.execute(sql, (rev, rev, seq, *_prefix_args(prefix), _WATCH_BATCH)).fetchall()
        meta = dict(
            db.execute("SELECT name, value FROM meta WHERE name IN ('revision', 'compacted')")
        )
        return rows, int(meta["revision"]), int(meta["compacted"])

    async def close(self) -> None:
        """Stop the sweeper and close the connection; idempotent."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

        def shut() -> None:
            with self._lock:
                self._closed = True
                if self._db is not None:
                    self._db.close()
                    self._db = None

        await asyncio.to_thread(shut)
