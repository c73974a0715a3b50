"""The chain's native hot paths (``_native.c``) when they were built, behind the numpy API.

``classify_batch`` makes exactly the decisions of ``classify.classify`` and gathers the same
literal pieces in one native pass per page (the GIL released around the heavy loops), so the
payloads are byte for byte those of the numpy fallback. ``rebuild`` is the decoder's: it writes
a batch's pages straight into the bytes object the decoder returns. Without the extension (no
compiler at install time) ``AVAILABLE`` is False and both ends use the fallback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from novacron_dwcp.encoding.cache import IndexedPageStore
from novacron_dwcp.encoding.classify import Classified
from novacron_dwcp.encoding.integrity import weights
from novacron_sdk.encoding.interface import MAX_BATCH_PAGES
from novacron_sdk.errors import EncodingError

try:
    from novacron_dwcp.encoding import _native
except ImportError:  # not compiled: the numpy fallback is used
    _native = None  # type: ignore[assignment]

AVAILABLE = _native is not None


def setting(settings: Mapping[str, Any]) -> bool:
    """The ``native`` codec setting: True by default when built; EncodingError if invalid."""
    value = settings.get("native", AVAILABLE)
    if value not in (True, False) or (value and not AVAILABLE):
        msg = (
            f"codec setting native={value!r}: use False, or True only when the "
            "extension was built (reinstall novacron-dwcp with a C compiler present)"
        )
        raise EncodingError(msg)
    return bool(value)


class Scratch:
    """The literal buffers the native pass writes into, kept from batch to batch.

    The literal pieces returned by ``classify_batch`` are views of these buffers: they are
    valid until the next call (the encoder compresses them before it returns).
    """

    def __init__(self) -> None:
        self.full = np.zeros(0, np.uint8)
        self.delta = np.zeros(0, np.uint8)

    def reserve(self, size: int) -> None:
        """Make both buffers at least ``size`` bytes."""
        if len(self.full) < size:
            self.full = np.empty(size, np.uint8)
            self.delta = np.empty(size, np.uint8)


def classify_batch(
    table: np.ndarray, slots: np.ndarray, store: IndexedPageStore, scratch: Scratch
) -> tuple[Classified, list[memoryview]]:
    """The rows of ``table`` classified against ``store``, and their literal pieces."""
    word_weights, _ = weights(table.shape[1], MAX_BATCH_PAGES)
    scratch.reserve(table.nbytes)
    # The whole batch: rows 0 to len(table) (the C function can take a part of it).
    (ops, refs, fps, sources, full_rows, run_counts, offsets, lengths, full_size, delta_size) = (
        _native.classify(
            table, 0, len(table), slots, store.slab, store.fingerprint, store.owner,
            store.by_fingerprint, word_weights, scratch.full, scratch.delta,
        )
    )  # fmt: skip
    delta = scratch.delta[:delta_size]
    found = Classified(
        np.frombuffer(ops, np.uint8), np.frombuffer(refs, np.int64),
        np.frombuffer(fps, np.uint64), slots, np.frombuffer(sources, np.int64),
        np.frombuffer(full_rows, np.int64), np.frombuffer(run_counts, np.uint16),
        np.frombuffer(offsets, np.uint16), np.frombuffer(lengths, np.uint16), delta.view(np.uint64),
    )  # fmt: skip
    return found, [scratch.full[:full_size].data, delta.data]


def rebuild(
    ops: np.ndarray,
    slots: np.ndarray,
    sources: np.ndarray,
    *,
    copies: tuple[np.ndarray, np.ndarray],
    runs: tuple[np.ndarray, np.ndarray, np.ndarray],
    literal: bytes,
    slab: np.ndarray,
    page_size: int,
) -> bytes:
    """A batch's pages as one bytes object (the decoder's ``_rebuild``, without copies).

    ``slots`` gives the held slot of every same/delta row, ``sources`` the slot of every
    duplicate in row order, ``copies`` the copy rows and the rows they copy, ``runs`` the run
    count of every delta and every run's offset and length, as int64 arrays. Inconsistent
    arrays raise EncodingError: nothing is read or written out of bounds.
    """
    copy_rows, copy_refs = copies
    run_counts, offsets, lengths = runs

    def int64(array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array, np.int64)

    try:
        pages: bytes = _native.rebuild(
            np.ascontiguousarray(ops, np.uint8), int64(slots), int64(sources), int64(copy_rows),
            int64(copy_refs), int64(run_counts), int64(offsets), int64(lengths), literal, slab,
            page_size,
        )  # fmt: skip
    except ValueError as error:
        msg = f"payload corrupt: {error}"
        raise EncodingError(msg) from error
    return pages
