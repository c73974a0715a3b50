"""The DWCP chain's payload format: a fixed header, a control section and literal chunks.

Every size in a payload is checked against a bound derived from the page count and page size
before anything is allocated, so a malformed or hostile payload costs at most one batch.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from novacron_sdk.encoding.interface import MAX_BATCH_PAGES
from novacron_sdk.errors import EncodingError

MAGIC = b"DWCP"
# Version 3: the header's batch checksum became a hash of the whole payload and of the page
# fingerprints (see integrity.batch_hash); version 2's was a linear sum over the pages only.
VERSION = 3
MAX_CHUNKS = 64
MIN_PAGE_SIZE = 64
# Run offsets and lengths are u16 on the wire.
MAX_PAGE_SIZE = 32768

# Page operations, one byte per page in the control section.
OP_ZERO = 0  # the page is all zero bytes
OP_SAME = 1  # unchanged: the receiver's cached version of this page
OP_DUP = 2  # identical to the receiver's cached version of another page (a reference)
OP_DELTA = 3  # runs of new bytes over the receiver's cached version of this page
OP_FULL = 4  # the whole page follows in the literal section
OP_COPY = 5  # identical to an earlier page of the same batch (a reference to its position)
OP_NAMES = ("zero", "same", "duplicate", "delta", "full", "copy")

# Compression methods of the control section and the literal chunks.
METHOD_RAW = 0
METHOD_LZ4 = 1
METHOD_ZSTD = 2
METHOD_ZSTD_LONG = 3  # two long-window streams spanning batches (see stream.py)

# Header flags. The encoder (re)starts its long-window streams (new frames, empty history,
# possibly another level) with this payload: the decoder drops its old streams.
FLAG_NEW_STREAMS = 1

HEADER = struct.Struct("<4sBBbBQ8s8sIIIIQIIIH")
CHUNK_ENTRY = struct.Struct("<II")
# Where the 64-bit batch hash sits in the header: it covers every other byte of the payload.
CHECKSUM_AT = struct.calcsize("<4sBBbBQ8s8sIIII")
CHECKSUM_END = CHECKSUM_AT + 8


def hashed_spans(payload: bytes | memoryview) -> tuple[memoryview, memoryview]:
    """The bytes of ``payload`` (or of a packed header) that the batch hash covers: all of
    them but the hash field itself."""
    view = memoryview(payload)
    return view[:CHECKSUM_AT], view[CHECKSUM_END:]


@dataclass(frozen=True)
class Header:
    """The fixed part of a payload."""

    method: int
    level: int
    seq: int
    stream_id: bytes
    state: bytes
    page_size: int
    cache_capacity: int
    cache_length: int
    page_count: int
    checksum: int
    control_raw: int
    control_compressed: int
    literal_raw: int
    chunks: tuple[tuple[int, int], ...]
    flags: int = 0

    def pack(self) -> bytes:
        """Header and chunk table as bytes."""
        head = HEADER.pack(
            MAGIC, VERSION, self.method, self.level, self.flags, self.seq, self.stream_id,
            self.state, self.page_size, self.cache_capacity, self.cache_length, self.page_count,
            self.checksum, self.control_raw, self.control_compressed, self.literal_raw,
            len(self.chunks),
        )  # fmt: skip
        return head + b"".join(CHUNK_ENTRY.pack(raw, comp) for raw, comp in self.chunks)

    @property
    def size(self) -> int:
        """Bytes taken by the header and chunk table."""
        return HEADER.size + CHUNK_ENTRY.size * len(self.chunks)


def check_page_size(page_size: int) -> None:
    """Reject page sizes the wire format cannot carry."""
    if not MIN_PAGE_SIZE <= page_size <= MAX_PAGE_SIZE or page_size % 8:
        msg = (
            f"page size {page_size} is not supported by the DWCP codec: use a multiple of 8 "
            f"between {MIN_PAGE_SIZE} and {MAX_PAGE_SIZE} (4096 is the usual one)"
        )
        raise EncodingError(msg)


def control_bound(page_count: int, page_size: int) -> int:
    """Largest control section a batch can need: ops, indices, refs, and delta runs."""
    # A delta is only sent when 2 + 4 * runs + literals < page_size, so runs < page_size / 4.
    return page_count * (1 + 8 + 8 + 2 + page_size)


def parse_header(payload: bytes, page_size: int) -> Header:
    """Parse and bound-check the header of ``payload``; raise EncodingError when malformed."""
    if len(payload) < HEADER.size:
        msg = f"DWCP payload of {len(payload)} bytes is shorter than its {HEADER.size}-byte header"
        raise EncodingError(msg)
    fields = HEADER.unpack_from(payload)
    (magic, version, method, level, flags, seq, stream_id, state, size, capacity, length,
     count, checksum, control_raw, control_comp, literal_raw, chunk_count) = fields  # fmt: skip
    if magic != MAGIC or version != VERSION:
        msg = (
            f"not a DWCP payload (magic {magic!r}): wrong codec?"
            if magic != MAGIC
            else f"DWCP payload of wire format version {version}; this decoder reads version "
            f"{VERSION} only: give both ends the same novacron-dwcp release"
        )
        raise EncodingError(msg)
    if size != page_size:
        msg = f"payload carries {size}-byte pages but the decoder was made for {page_size}"
        raise EncodingError(msg)
    if method not in (METHOD_RAW, METHOD_LZ4, METHOD_ZSTD, METHOD_ZSTD_LONG):
        msg = f"unknown compression method {method} in DWCP payload"
        raise EncodingError(msg)
    if count > MAX_BATCH_PAGES:
        msg = f"payload declares {count} pages; at most {MAX_BATCH_PAGES} are allowed per batch"
        raise EncodingError(msg)
    if control_raw > control_bound(count, page_size) or literal_raw > count * page_size:
        msg = (
            f"payload declares {control_raw} control and {literal_raw} literal bytes, more than "
            f"{count} pages can need: the payload is corrupt"
        )
        raise EncodingError(msg)
    if chunk_count > MAX_CHUNKS:
        msg = f"payload declares {chunk_count} chunks; at most {MAX_CHUNKS} are allowed"
        raise EncodingError(msg)
    if flags not in (0, FLAG_NEW_STREAMS) or (flags and method != METHOD_ZSTD_LONG):
        msg = f"unknown DWCP header flags {flags:#x} for method {method}: the payload is corrupt"
        raise EncodingError(msg)
    if method == METHOD_ZSTD_LONG and chunk_count != 2:
        msg = f"a long-window payload has 2 chunks (one per stream), not {chunk_count}"
        raise EncodingError(msg)
    table_end = HEADER.size + CHUNK_ENTRY.size * chunk_count
    if len(payload) < table_end:
        msg = "DWCP payload ends inside its chunk table"
        raise EncodingError(msg)
    chunks = tuple(
        CHUNK_ENTRY.unpack_from(payload, HEADER.size + CHUNK_ENTRY.size * i)
        for i in range(chunk_count)
    )
    if sum(raw for raw, _ in chunks) != literal_raw:
        msg = "DWCP chunk sizes do not add up to the declared literal size: the payload is corrupt"
        raise EncodingError(msg)
    if table_end + control_comp + sum(comp for _, comp in chunks) != len(payload):
        msg = "DWCP payload length does not match its declared section sizes"
        raise EncodingError(msg)
    return Header(
        method, level, seq, stream_id, state, size, capacity, length, count, checksum,
        control_raw, control_comp, literal_raw, chunks, flags,
    )  # fmt: skip
