"""Type stub of the native hot path of the DWCP encoder (``_native.c``)."""

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
