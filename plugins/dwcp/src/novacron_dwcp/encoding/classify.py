"""Deciding the operation of every page of a batch at once, with numpy, against the store.

Every decision is taken against the store as it was before the batch (both ends update it
only after the whole batch), so pages need not be visited one by one: zero pages, unchanged
pages, duplicates of held pages, copies of earlier pages of the batch, deltas and whole pages
are each found with a few array operations over the batch. Every candidate found through a
fingerprint is confirmed by comparing the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from novacron_dwcp.encoding import delta
from novacron_dwcp.encoding.cache import IndexedPageStore
from novacron_dwcp.encoding.integrity import fingerprints as page_fingerprints
from novacron_dwcp.encoding.wire import OP_COPY, OP_DELTA, OP_DUP, OP_FULL, OP_SAME

# Fingerprint the gathered non-zero rows only when they are at most this share of the batch
# (the gather is a copy; for mostly non-zero batches fingerprinting every row is cheaper).
GATHER_SHARE = 0.6
# A page with more than this share of every REWRITE_STRIDE-th word changed goes whole.
REWRITE_STRIDE = 8
REWRITE_SHARE = 0.5


@dataclass
class Classified:
    """The operations of one batch and what the payload carries for them."""

    ops: np.ndarray  # u8 per row
    refs: np.ndarray  # i64 per row: page index (duplicate) or row (copy); else unused
    fingerprints: np.ndarray  # u64 per row (0 for zero pages)
    slots: np.ndarray  # i64 per row: the page's slot in the store before the batch, or -1
    sources: np.ndarray  # slots read by duplicate references
    full_rows: np.ndarray
    run_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint16))
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint16))
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint16))
    delta_words: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))

    def control(self, indices: list[int]) -> bytes:
        """The control section: ops, index deltas, references, run counts, offsets, lengths."""
        ops = self.ops
        referenced = (ops == OP_DUP) | (ops == OP_COPY)
        index_deltas = np.array(indices, np.uint64)
        if index_deltas.size > 1:
            index_deltas[1:] -= index_deltas[:-1].copy()
        parts = (
            ops.tobytes(),
            index_deltas.tobytes(),
            self.refs[referenced].astype(np.uint64).tobytes(),
            self.run_counts.tobytes(),
            self.offsets.tobytes(),
            self.lengths.tobytes(),
        )
        return b"".join(parts)


def fingerprint_rows(table: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Fingerprints of ``rows`` of ``table`` in a full-length array (0 elsewhere)."""
    out = np.zeros(len(table), np.uint64)
    if rows.size == len(table):
        out[:] = page_fingerprints(table)
    elif rows.size > GATHER_SHARE * len(table):
        out[rows] = page_fingerprints(table)[rows]
    elif rows.size:
        out[rows] = page_fingerprints(table[rows])
    return out


def _equal_rows(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    result: np.ndarray = (left == right).all(axis=1)
    return result


def classify(table: np.ndarray, slots: np.ndarray, store: IndexedPageStore) -> Classified:
    """Decide every page's operation against ``store`` (read only) and build the deltas.

    ``slots`` is ``store.lookup`` of the pages' indices. Only reads: several parts of a batch
    can be classified at once on different threads (numpy releases the GIL in the heavy work).
    """
    count = len(table)
    nonzero = np.flatnonzero(table.any(axis=1))
    fps = fingerprint_rows(table, nonzero)
    ops = np.zeros(count, np.uint8)
    refs = np.zeros(count, np.int64)
    sources = np.zeros(0, np.int64)
    rest = nonzero
    cached = rest[slots[rest] >= 0]
    if cached.size:
        # Same fingerprint as the held version first: only those are compared byte for byte.
        alike = cached[store.fingerprint[slots[cached]] == fps[cached]]
        same = alike[_equal_rows(table[alike], store.slab[slots[alike]])]
        ops[same] = OP_SAME
        rest = rest[ops[rest] == 0]
    if rest.size and len(store):
        found = store.candidates(fps[rest])
        hit = np.flatnonzero(found >= 0)
        if hit.size:
            rows, held = rest[hit], found[hit]
            equal = _equal_rows(table[rows], store.slab[held])
            rows, sources = rows[equal], held[equal]
            ops[rows] = OP_DUP
            refs[rows] = store.owner[sources]
            rest = rest[ops[rest] == 0]
    if rest.size > 1:
        _find_copies(table, fps, rest, ops, refs)
        rest = rest[ops[rest] == 0]
    has_base = rest[slots[rest] >= 0]
    full = rest[slots[rest] < 0]
    if has_base.size:
        # Pages rewritten whole (most of a sample of their words changed) cannot give a
        # useful delta: they skip the exact comparison, which would cost two passes.
        sample = slice(None, None, REWRITE_STRIDE)
        changed = (table[has_base, sample] != store.slab[slots[has_base], sample]).mean(axis=1)
        rewritten = changed > REWRITE_SHARE
        if rewritten.any():
            full = np.sort(np.concatenate((full, has_base[rewritten])))
            has_base = has_base[~rewritten]
    result = Classified(ops, refs, fps, slots, sources, full)
    if has_base.size:
        new = table[has_base]
        found_runs = delta.compute(new, store.slab[slots[has_base]])
        ops[has_base[found_runs.use_delta]] = OP_DELTA
        # Where the runs would not be smaller than the page, the page goes whole.
        full = np.sort(np.concatenate((full, has_base[~found_runs.use_delta])))
        result.full_rows = full
        result.run_counts = found_runs.run_counts
        result.offsets = (found_runs.offsets * 8).astype(np.uint16)
        result.lengths = (found_runs.lengths * 8).astype(np.uint16)
        result.delta_words = delta.gather(
            new, found_runs.run_rows, found_runs.offsets, found_runs.lengths
        )
    ops[full] = OP_FULL
    return result


def _find_copies(
    table: np.ndarray, fps: np.ndarray, rows: np.ndarray, ops: np.ndarray, refs: np.ndarray
) -> None:
    """Mark rows identical to an earlier row of ``rows`` as copies of that row."""
    keys = fps[rows].tolist()
    # Built backwards, the dict keeps the first row of every fingerprint.
    first = dict(zip(reversed(keys), reversed(rows.tolist()), strict=True))
    if len(first) == len(keys):
        return
    earlier = np.fromiter(map(first.__getitem__, keys), np.int64, len(keys))
    candidates = np.flatnonzero(earlier != rows)
    copies, originals = rows[candidates], earlier[candidates]
    equal = _equal_rows(table[copies], table[originals])
    ops[copies[equal]] = OP_COPY
    refs[copies[equal]] = originals[equal]
