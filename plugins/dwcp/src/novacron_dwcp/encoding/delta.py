"""XBZRLE-like page deltas: runs of changed bytes, carrying the new bytes of each run.

Like QEMU's XBZRLE, a run carries the *new* bytes rather than the XOR: new content compresses
better than the XOR of two unrelated values. Finding the runs is vectorised over the whole
batch with numpy, and so is applying them (see the decoder).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Two changed bytes this close (or closer) share a run: a run costs 4 bytes of control, and
# short unchanged gaps compress to almost nothing inside the literal bytes.
RUN_GAP = 16
RUN_OVERHEAD = 4
PAGE_OVERHEAD = 2


@dataclass(frozen=True)
class Deltas:
    """Runs (in 8-byte words) for the rows a delta pays off for, in row order."""

    use_delta: np.ndarray  # bool per row: the delta is smaller than the page
    run_counts: np.ndarray  # u16, one per row that uses a delta
    run_rows: np.ndarray  # row of each run
    offsets: np.ndarray  # word offset of each run in its page
    lengths: np.ndarray  # length of each run in words


def compute(new: np.ndarray, old: np.ndarray, gap: int = RUN_GAP) -> Deltas:
    """Runs that turn each row of ``old`` into the same row of ``new`` (both (rows, words) u64).

    Runs are found on 8-byte words: eight times fewer elements for numpy to scan, for at most
    a few unchanged bytes more per run (which compress to almost nothing).
    """
    rows, words = new.shape
    size = words * 8
    differs = new != old
    # Rows with this many changed words cannot yield a delta smaller than the page: skip them
    # before the (costlier) run search, which matters when most dirty pages are rewritten.
    hopeless = differs.sum(axis=1) * 8 + PAGE_OVERHEAD + RUN_OVERHEAD >= size
    if hopeless.any():
        differs[hopeless] = False
    changed = np.flatnonzero(differs.reshape(-1))
    step = np.diff(changed)
    # A step longer than the gap ends a run, and so does crossing into the next page (the
    # next word's offset in its page is then smaller than the step).
    breaks = np.flatnonzero((step > max(1, gap // 8)) | (changed[1:] % words < step))
    starts = changed[np.concatenate(([0], breaks + 1))] if changed.size else changed
    ends = changed[np.concatenate((breaks, [changed.size - 1]))] + 1 if changed.size else changed
    run_rows = starts // words
    lengths = ends - starts
    runs_per_row = np.bincount(run_rows, minlength=rows)
    literal_per_row = np.bincount(run_rows, weights=lengths, minlength=rows) * 8
    use = (PAGE_OVERHEAD + RUN_OVERHEAD * runs_per_row + literal_per_row < size) & ~hopeless
    keep = use[run_rows]
    return Deltas(
        use_delta=use,
        run_counts=runs_per_row[use].astype(np.uint16),
        run_rows=run_rows[keep],
        offsets=starts[keep] - run_rows[keep] * words,
        lengths=lengths[keep],
    )


def gather(
    rows: np.ndarray, run_rows: np.ndarray, offsets: np.ndarray, lengths: np.ndarray
) -> np.ndarray:
    """The words of every run (row, word offset, word length; in row order), concatenated."""
    starts = run_rows * rows.shape[1] + offsets
    total = int(lengths.sum())
    first_of_run = np.cumsum(lengths) - lengths
    positions = np.repeat(starts - first_of_run, lengths) + np.arange(total)
    return rows.reshape(-1)[positions]
