"""The encoder's native hot path (``_native.c``) when it was built, behind the numpy API.

``classify_batch`` makes exactly the decisions of ``classify.classify`` and gathers the same
literal pieces in one native pass per page (the GIL released around the heavy loops), so the
payloads are byte for byte those of the numpy fallback. Without the extension (no compiler at
install time) ``AVAILABLE`` is False and the chain uses the fallback.
"""

from __future__ import annotations

import numpy as np

from novacron_dwcp.encoding.cache import IndexedPageStore
from novacron_dwcp.encoding.classify import Classified
from novacron_dwcp.encoding.integrity import weights
from novacron_sdk.encoding.interface import MAX_BATCH_PAGES

try:
    from novacron_dwcp.encoding import _native
except ImportError:  # not compiled: the numpy fallback is used
    _native = None  # type: ignore[assignment]

AVAILABLE = _native is not None


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
