"""The page-version store both ends of a DWCP stream keep identical, updated a batch at a time.

Pages live in one numpy slab (a slot per cached page), so a whole batch is compared with,
gathered from and written to the store with a few vectorised operations. Both sides apply
the same batch update to the same state, so the decoder always holds every page version the
encoder may refer to. Eviction is least-recently-used at batch granularity: every slot
carries the number of the last batch that used it, and when slots run out the oldest
(ties: lowest slot) are evicted, at least a sixteenth of the capacity at a time so that the
sort this needs is rare.
"""

from __future__ import annotations

import contextlib
import mmap
from itertools import repeat

import numpy as np

# The slab grows by at least this many rows, doubling, up to the capacity.
GROW_ROWS = 1024
# Evict at least capacity // EVICT_SHARE slots whenever eviction is needed.
EVICT_SHARE = 16
# Slabs at least this large are mapped with transparent huge pages where the kernel offers them.
HUGE_SLAB_BYTES = 4 << 20


def zeroed_slab(rows: int, words: int) -> np.ndarray:
    """A zeroed (rows, words) u64 slab whose memory is mapped only when first written.

    Large slabs ask for transparent huge pages: filling the store then costs one page fault
    per 2 MiB instead of one per 4 KiB (about ten times faster to fill on the development VM).
    """
    size = rows * words * 8
    if size < HUGE_SLAB_BYTES:
        return np.zeros((rows, words), np.uint64)
    area = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None:
        with contextlib.suppress(OSError):  # no transparent huge pages: plain pages
            area.madvise(advice)
    return np.frombuffer(area, np.uint64).reshape(rows, words)


class PageStore:
    """A bounded store of page index -> content; the state both ends keep in lock step."""

    def __init__(self, capacity: int, words: int, *, reserve: bool = False) -> None:
        self.capacity = capacity
        self.words = words
        self.slab = np.zeros((0, words), np.uint64)
        self.owner = np.zeros(0, np.int64)  # page index per slot, -1 when free
        self.stamp = np.zeros(0, np.int64)  # batch number of the last use per slot
        self.slot_of: dict[int, int] = {}
        self.free: list[int] = []
        self.top = 0  # slots handed out at least once
        self.clock = 0  # batches applied
        if reserve:
            # np.zeros maps untouched memory lazily: the encoder pays only for what it holds.
            self._grow(capacity)

    def __len__(self) -> int:
        return len(self.slot_of)

    def lookup(self, indices: list[int]) -> np.ndarray:
        """The slot of each page index, -1 where the page is not held."""
        found = map(self.slot_of.get, indices, repeat(-1))
        return np.fromiter(found, np.int64, len(indices))

    def get(self, index: int) -> bytes | None:
        """The held version of page ``index``, if any."""
        slot = self.slot_of.get(index)
        return None if slot is None else self.slab[slot].tobytes()

    def items(self) -> list[tuple[int, bytes]]:
        """Every held page as (index, content), by index: to compare two stores."""
        return [(i, self.slab[s].tobytes()) for i, s in sorted(self.slot_of.items())]

    def preload(self, table: np.ndarray, first_index: int) -> np.ndarray:
        """Hold the rows of ``table`` as pages ``first_index``, ``first_index + 1``, ...

        Used for reference pages before the first batch; both ends call it with the same
        arguments. Returns their slots. The store must have room for them.
        """
        if len(table) > self.capacity - len(self):
            msg = f"{len(table)} pages do not fit the {self.capacity}-page store"
            raise ValueError(msg)
        given = self._allocate(len(table))
        indices = list(range(first_index, first_index + len(table)))
        self.owner[given] = indices
        self.slot_of.update(zip(indices, given.tolist(), strict=True))
        self.stamp[given] = self.clock
        self.slab[given] = table
        return given

    def drop(self, indices: list[int]) -> None:
        """Forget these pages (zero pages, or evicted ones)."""
        freed = [s for s in map(self.slot_of.pop, indices, repeat(None)) if s is not None]
        if freed:
            self.owner[freed] = -1
            self.free.extend(freed)

    def update(
        self,
        indices: list[int],
        table: np.ndarray,
        ops: np.ndarray,
        slots: np.ndarray,
        sources: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Apply one batch; both ends call this with the same arguments.

        ``ops`` holds per row whether the page is zero (0), unchanged (1) or has the content
        of its row of ``table`` (other values); ``slots`` is ``lookup(indices)`` before the
        batch and ``sources`` the slots the batch read by reference. The last occurrence of
        an index in a batch decides. Returns the rows and slots written (content index).
        """
        self.clock += 1
        rows = _last_occurrences(indices)
        final = ops[rows]
        dropped = rows[(final == 0) & (slots[rows] >= 0)]
        if dropped.size:
            self.drop([indices[k] for k in dropped.tolist()])
        touched = rows[final > 0]
        held = slots[touched]
        self.stamp[held[held >= 0]] = self.clock
        if sources.size:
            self.stamp[sources] = self.clock
        written = rows[final > 1]
        slots = slots[written]
        new = np.flatnonzero(slots < 0)
        if new.size:
            given = self._allocate(new.size)
            new = new[: given.size]
            slots[new] = given
            new_indices = [indices[k] for k in written[new].tolist()]
            self.owner[given] = new_indices
            self.slot_of.update(zip(new_indices, given.tolist(), strict=True))
            self.stamp[given] = self.clock
        held = slots >= 0
        written, slots = written[held], slots[held]
        if slots.size and bool((np.diff(slots) == 1).all()):
            # Fresh slots are handed out in order: one slice, no scatter. ``written`` are rows
            # of ``table``, so "clip" never clips; it spares the buffered copy that take's
            # default mode makes of an ``out`` argument.
            start = int(slots[0])
            out = self.slab[start : start + slots.size]
            np.take(table, written, axis=0, out=out, mode="clip")
        else:
            self.slab[slots] = table[written]
        return written, slots

    def _allocate(self, count: int) -> np.ndarray:
        """Up to ``count`` free slots (fewer only when every held page is in this batch)."""
        spare = len(self.free) + self.capacity - self.top
        if count > spare:
            self._evict(max(count - spare, self.capacity // EVICT_SHARE))
        from_free = min(count, len(self.free))
        taken = self.free[len(self.free) - from_free :]
        del self.free[len(self.free) - from_free :]
        fresh = min(count - from_free, self.capacity - self.top)
        self._grow(self.top + fresh)
        taken.extend(range(self.top, self.top + fresh))
        self.top += fresh
        return np.array(taken, np.int64)

    def _evict(self, count: int) -> None:
        """Evict the ``count`` least recently used slots that this batch did not use."""
        held = np.flatnonzero(self.owner[: self.top] >= 0)
        held = held[self.stamp[held] < self.clock]
        oldest = held[np.argsort(self.stamp[held], kind="stable")[:count]]
        self.drop(self.owner[oldest].tolist())

    def _grow(self, rows: int) -> None:
        have = len(self.owner)
        if rows <= have:
            return
        size = min(self.capacity, max(rows, 2 * have, GROW_ROWS))
        if len(self.slab) < size:
            # A large store maps its whole slab at once (memory is used only where rows are
            # written), so the slab is never copied to grow; a small one grows by doubling.
            large = self.capacity * self.words * 8 >= HUGE_SLAB_BYTES
            slab = zeroed_slab(self.capacity if large else size, self.words)
            slab[:have] = self.slab[:have]
            self.slab = slab
        self.owner = np.concatenate((self.owner, np.full(size - have, -1, np.int64)))
        self.stamp = np.concatenate((self.stamp, np.zeros(size - have, np.int64)))


class IndexedPageStore(PageStore):
    """The encoder side: the same store, plus a content index (fingerprint -> slot).

    The index is never trusted: a candidate slot must still be held, carry the same
    fingerprint, and hold the same bytes (see ``candidates`` and the chain's confirmation),
    so stale entries cost a miss, never a wrong reference. It is rebuilt when stale entries
    outnumber live ones.
    """

    def __init__(self, capacity: int, words: int) -> None:
        super().__init__(capacity, words, reserve=True)
        self.by_fingerprint: dict[int, int] = {}
        self.fingerprint = np.zeros(len(self.owner), np.uint64)

    def candidates(self, fingerprints: np.ndarray) -> np.ndarray:
        """Per fingerprint, a held slot whose page had that fingerprint when stored, or -1."""
        found = map(self.by_fingerprint.get, fingerprints.tolist(), repeat(-1))
        slots = np.fromiter(found, np.int64, len(fingerprints))
        hit = slots >= 0
        live = self.owner[slots[hit]] >= 0
        live &= self.fingerprint[slots[hit]] == fingerprints[hit]
        slots[np.flatnonzero(hit)[~live]] = -1
        return slots

    def index(self, slots: np.ndarray, fingerprints: np.ndarray) -> None:
        """Record the fingerprints of newly written slots."""
        if len(self.fingerprint) < len(self.owner):
            grown = np.zeros(len(self.owner), np.uint64)
            grown[: len(self.fingerprint)] = self.fingerprint
            self.fingerprint = grown
        self.fingerprint[slots] = fingerprints
        self.by_fingerprint.update(zip(fingerprints.tolist(), slots.tolist(), strict=True))
        if len(self.by_fingerprint) > 2 * len(self.slot_of) + GROW_ROWS:
            held = np.flatnonzero(self.owner[: self.top] >= 0)
            self.by_fingerprint = dict(
                zip(self.fingerprint[held].tolist(), held.tolist(), strict=True)
            )


def _last_occurrences(indices: list[int]) -> np.ndarray:
    """Rows of ``indices`` that hold the last occurrence of their index, in row order."""
    last = dict(zip(indices, range(len(indices)), strict=True))
    if len(last) == len(indices):
        return np.arange(len(indices))
    return np.sort(np.fromiter(last.values(), np.int64, len(last)))
