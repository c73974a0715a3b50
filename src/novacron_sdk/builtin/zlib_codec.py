"""The builtin page codecs: ``zlib`` (zero-page elimination, then zlib) and ``raw`` (baseline).

One payload per batch, network byte order::

    magic      4s   b"NCPB"
    version    u8   1
    kind       u8   0 = raw, 1 = zero+zlib (a decoder refuses the other codec's payloads)
    flags      u8   bit 0: page indices are u64 (else u32)
    reserved   u8   0
    seq        u64  batch number: 0, 1, 2, ... per encoder
    count      u32  pages in the batch (at most MAX_BATCH_PAGES)
    page_size  u32  must equal the decoder's page size
    indices    count x u32/u64
    zlib only: zero-page bitmap (ceil(count / 8) bytes, bit i = page i is all zeros),
               then zlib of the non-zero pages concatenated
    raw only:  the pages as they are

The decoder checks the sequence number (a skipped or repeated payload raises DesyncError)
and every length; decompression is capped at the size the header declares, so a malformed
payload or a zip bomb raises EncodingError without allocating more than one batch.
"""

from __future__ import annotations

import struct
import sys
import zlib
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from novacron_sdk.encoding.interface import (
    MAX_BATCH_PAGES,
    CodecStats,
    PageBatch,
    PageCodec,
    PageDecoder,
    PageEncoder,
)
from novacron_sdk.errors import DesyncError, EncodingError

MAGIC = b"NCPB"
VERSION = 1
KIND_RAW = 0
KIND_ZLIB = 1
FLAG_WIDE_INDICES = 0x01
MAX_PAGE_SIZE = 1 << 24
_HEADER = struct.Struct("!4sBBBBQII")
_KIND_NAMES = {KIND_RAW: "raw", KIND_ZLIB: "zlib"}


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """The checked header of one payload, and where its body starts."""

    kind: int
    flags: int
    seq: int
    count: int
    page_size: int
    body_offset: int


def _check_page_size(page_size: int) -> int:
    if not 0 < page_size <= MAX_PAGE_SIZE:
        msg = f"page size {page_size} is outside 1..{MAX_PAGE_SIZE}"
        raise EncodingError(msg)
    return page_size


def pack_batch_header(kind: int, seq: int, indices: Sequence[int], page_size: int) -> bytes:
    """Header plus the index array of a batch (the part both codecs share)."""
    count = len(indices)
    if count > MAX_BATCH_PAGES:
        msg = f"batch of {count} pages exceeds MAX_BATCH_PAGES={MAX_BATCH_PAGES}; split it"
        raise EncodingError(msg)
    if count and min(indices) < 0:
        msg = "page indices must be non-negative"
        raise EncodingError(msg)
    wide = bool(count) and max(indices) >= 2**32
    if wide and max(indices) >= 2**64:
        msg = "page indices must fit in 64 bits"
        raise EncodingError(msg)
    packed = array("Q" if wide else "I", indices)
    if sys.byteorder == "little":
        packed.byteswap()
    flags = FLAG_WIDE_INDICES if wide else 0
    header = _HEADER.pack(MAGIC, VERSION, kind, flags, 0, seq, count, page_size)
    return header + packed.tobytes()


def parse_batch_header(payload: bytes, *, kind: int, page_size: int) -> BatchHeader:
    """Check magic, version, kind, page count and size; raise EncodingError if wrong."""
    if len(payload) < _HEADER.size:
        msg = (
            f"truncated payload: {len(payload)} bytes is shorter than the "
            f"{_HEADER.size}-byte header"
        )
        raise EncodingError(msg)
    magic, version, got_kind, flags, reserved, seq, count, size = _HEADER.unpack_from(payload)
    if magic != MAGIC:
        msg = f"bad payload magic {magic!r}, expected {MAGIC!r}: not a page-batch payload"
        raise EncodingError(msg)
    if version != VERSION:
        msg = f"unsupported page-batch version {version}, this side decodes version {VERSION}"
        raise EncodingError(msg)
    if got_kind != kind:
        name = _KIND_NAMES.get(got_kind, f"unknown kind {got_kind}")
        msg = f"payload was encoded by the {name!r} codec, this decoder is {_KIND_NAMES[kind]!r}"
        raise EncodingError(msg)
    if count > MAX_BATCH_PAGES:
        msg = f"payload declares {count} pages, more than MAX_BATCH_PAGES={MAX_BATCH_PAGES}"
        raise EncodingError(msg)
    if size != page_size:
        msg = f"payload has {size}-byte pages, the decoder expects {page_size}"
        raise EncodingError(msg)
    if reserved or flags & ~FLAG_WIDE_INDICES:
        msg = (
            f"payload header has reserved byte {reserved:#x} and flags {flags:#x}; only flag "
            f"{FLAG_WIDE_INDICES:#x} is defined and the reserved byte must be 0"
        )
        raise EncodingError(msg)
    width = 8 if flags & FLAG_WIDE_INDICES else 4
    body_offset = _HEADER.size + count * width
    if len(payload) < body_offset:
        msg = (
            f"truncated payload: {count} page indices need {body_offset} bytes, got {len(payload)}"
        )
        raise EncodingError(msg)
    return BatchHeader(got_kind, flags, seq, count, size, body_offset)


def unpack_indices(payload: bytes, header: BatchHeader) -> list[int]:
    """The page indices of a payload whose header was checked."""
    wide = header.flags & FLAG_WIDE_INDICES
    indices = array("Q" if wide else "I")
    indices.frombytes(payload[_HEADER.size : header.body_offset])
    if sys.byteorder == "little":
        indices.byteswap()
    return indices.tolist()


class _Encoder(PageEncoder):
    """Shared encoder bookkeeping: sequence numbers, page-size checks and stats."""

    kind = KIND_RAW

    def __init__(self, page_size: int) -> None:
        self.page_size = _check_page_size(page_size)
        self._seq = 0
        self._stats = CodecStats()

    def encode(self, batch: PageBatch) -> bytes:
        """One payload for ``batch``; the batch's page size must be the encoder's."""
        if batch.page_size != self.page_size:
            msg = (
                f"batch has {batch.page_size}-byte pages, "
                f"this encoder was made for {self.page_size}"
            )
            raise EncodingError(msg)
        head = pack_batch_header(self.kind, self._seq, batch.indices, self.page_size)
        payload = head + self._body(batch)
        self._seq += 1
        self._stats.pages_in += len(batch.indices)
        self._stats.bytes_in += len(batch.data)
        self._stats.bytes_out += len(payload)
        return payload

    def _body(self, batch: PageBatch) -> bytes:
        self._count("raw", len(batch.indices))
        return batch.data

    def _count(self, kind: str, n: int) -> None:
        if n:
            self._stats.by_kind[kind] = self._stats.by_kind.get(kind, 0) + n

    def stats(self) -> CodecStats:
        """Counters so far (a copy)."""
        s = self._stats
        return CodecStats(s.pages_in, s.bytes_in, s.bytes_out, dict(s.by_kind))


class _Decoder(PageDecoder):
    """Shared decoder bookkeeping: header checks and the expected sequence number."""

    kind = KIND_RAW

    def __init__(self, page_size: int) -> None:
        self.page_size = _check_page_size(page_size)
        self._expected = 0

    def decode(self, payload: bytes) -> PageBatch:
        """The batch ``payload`` encodes; DesyncError if it is not the next one."""
        header = parse_batch_header(payload, kind=self.kind, page_size=self.page_size)
        if header.seq != self._expected:
            what = "repeated" if header.seq < self._expected else "skipped"
            msg = (
                f"{what} payload: got batch {header.seq}, expected {self._expected}; "
                "encoder and decoder are out of step, restart the transfer"
            )
            raise DesyncError(msg)
        indices = unpack_indices(payload, header)
        data = self._body(payload, header)
        self._expected += 1
        return PageBatch(indices=indices, data=data, page_size=self.page_size)

    def _body(self, payload: bytes, header: BatchHeader) -> bytes:
        body = payload[header.body_offset :]
        if len(body) != header.count * self.page_size:
            msg = (
                f"malformed payload: the raw body has {len(body)} bytes for "
                f"{header.count} pages of {self.page_size}"
            )
            raise EncodingError(msg)
        return body


class _ZeroZlibEncoder(_Encoder):
    kind = KIND_ZLIB

    def __init__(self, page_size: int, level: int) -> None:
        super().__init__(page_size)
        self._level = level
        self._zero = bytes(page_size)

    def _body(self, batch: PageBatch) -> bytes:
        size = self.page_size
        data, zero = batch.data, self._zero
        view = memoryview(data)
        count = len(batch.indices)
        bitmap = bytearray((count + 7) // 8)
        pages: list[memoryview] = []
        for i in range(count):
            # startswith compares in place; comparing memoryviews is ten times slower.
            if data.startswith(zero, i * size):
                bitmap[i >> 3] |= 1 << (i & 7)
            else:
                pages.append(view[i * size : (i + 1) * size])
        self._count("zero", count - len(pages))
        self._count("compressed", len(pages))
        body = zlib.compress(b"".join(pages), self._level) if pages else b""
        return bytes(bitmap) + body


class _ZeroZlibDecoder(_Decoder):
    kind = KIND_ZLIB

    def _body(self, payload: bytes, header: BatchHeader) -> bytes:
        count, size = header.count, self.page_size
        bitmap_end = header.body_offset + (count + 7) // 8
        if len(payload) < bitmap_end:
            msg = f"truncated payload: the zero-page bitmap of {count} pages is cut short"
            raise EncodingError(msg)
        bitmap = payload[header.body_offset : bitmap_end]
        zero = [bool(bitmap[i >> 3] >> (i & 7) & 1) for i in range(count)]
        if count % 8 and bitmap[-1] >> (count % 8):
            msg = "malformed payload: bits set past the last page in the zero-page bitmap"
            raise EncodingError(msg)
        nonzero = count - sum(zero)
        pages = _inflate(payload[bitmap_end:], nonzero * size)
        out = bytearray(count * size)
        src = 0
        for i in range(count):
            if not zero[i]:
                out[i * size : (i + 1) * size] = pages[src : src + size]
                src += size
        return bytes(out)


def _inflate(body: bytes, expected: int) -> bytes:
    """Decompress ``body`` to exactly ``expected`` bytes, never allocating more."""
    if expected == 0:
        if body:
            msg = f"malformed payload: {len(body)} stray bytes after an all-zero batch"
            raise EncodingError(msg)
        return b""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(body, expected)
        if len(out) == expected and not inflater.eof:
            # The end-of-stream marker may still be pending; one more byte would be too many.
            extra = inflater.decompress(inflater.unconsumed_tail, 1)
            if extra:
                msg = f"malformed payload: the compressed pages inflate past {expected} bytes"
                raise EncodingError(msg)
    except zlib.error as exc:
        msg = f"malformed payload: zlib could not inflate the pages: {exc}"
        raise EncodingError(msg) from exc
    if len(out) != expected or not inflater.eof:
        msg = f"malformed payload: the compressed pages give {len(out)} bytes, expected {expected}"
        raise EncodingError(msg)
    if inflater.unused_data:
        msg = f"malformed payload: {len(inflater.unused_data)} stray bytes after the pages"
        raise EncodingError(msg)
    return out


class ZeroZlibCodec(PageCodec):
    """Zero pages become one bit each; the other pages are zlib-compressed together.

    Settings: ``level`` (zlib level 0-9, default 1: fast, and migration is usually CPU-bound
    before it is link-bound on a LAN).
    """

    name = "zlib"

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        level = self.settings.get("level", 1)
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 9:
            msg = f"zlib codec setting 'level' must be an integer 0-9, got {level!r}"
            raise EncodingError(msg)
        self.level = level

    def new_encoder(self, page_size: int = 4096) -> PageEncoder:
        """A fresh encoder (batch numbers start at 0)."""
        return _ZeroZlibEncoder(page_size, self.level)

    def new_decoder(self, page_size: int = 4096) -> PageDecoder:
        """A fresh decoder expecting batch 0."""
        return _ZeroZlibDecoder(page_size)


class RawCodec(PageCodec):
    """Pages as they are, with the shared header: the baseline to compare codecs against."""

    name = "raw"

    def new_encoder(self, page_size: int = 4096) -> PageEncoder:
        """A fresh encoder (batch numbers start at 0)."""
        return _Encoder(page_size)

    def new_decoder(self, page_size: int = 4096) -> PageDecoder:
        """A fresh decoder expecting batch 0."""
        return _Decoder(page_size)
