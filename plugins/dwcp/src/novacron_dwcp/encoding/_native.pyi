"""Type stub of the native hot paths of the DWCP chain (``_native.c``)."""

import numpy as np

Buffer = bytes | memoryview | np.ndarray

def classify(
    table: Buffer,
    start: int,
    stop: int,
    slots: Buffer,
    slab: Buffer,
    stored_fp: Buffer,
    owner: Buffer,
    index: dict[int, int],
    weights: Buffer,
    full: Buffer,
    delta: Buffer,
    /,
) -> tuple[bytes, bytes, bytes, bytes, bytes, bytes, bytes, bytes, int, int]: ...
def rebuild(
    ops: Buffer,
    slots: Buffer,
    sources: Buffer,
    copy_rows: Buffer,
    copy_refs: Buffer,
    run_counts: Buffer,
    offsets: Buffer,
    lengths: Buffer,
    literal: Buffer,
    slab: Buffer,
    page_size: int,
    /,
) -> bytes: ...
