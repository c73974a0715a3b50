"""The DWCP codec chain (HDE): zero pages, duplicates, deltas, then adaptive zstd/lz4.

Each batch goes through: zero-page elimination; unchanged pages (same as the receiver's
cached version); duplicate elimination (a reference to a cached page with identical content);
an XBZRLE-like delta against the receiver's cached version of the page; full pages otherwise.
The control data and the literal bytes are then compressed with the method the adaptive
selector picks. Encoder and decoder keep identical bounded page caches; every payload carries
the batch sequence number, the stream id, a rolling digest of all earlier control data, the
cache length and a checksum of every page of the batch, so a decoder out of step
raises DesyncError instead of returning wrong pages.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any, ClassVar, cast

import numpy as np

from novacron_dwcp.encoding import compress, delta, stream
from novacron_dwcp.encoding.cache import IndexedPageCache
from novacron_dwcp.encoding.decoder import DwcpDecoder
from novacron_dwcp.encoding.integrity import STATE_SIZE, checksum, next_state
from novacron_dwcp.encoding.integrity import fingerprints as page_fingerprints
from novacron_dwcp.encoding.wire import (
    METHOD_RAW,
    METHOD_ZSTD_LONG,
    OP_DELTA,
    OP_DUP,
    OP_FULL,
    OP_NAMES,
    OP_SAME,
    Header,
    check_page_size,
)
from novacron_sdk.encoding.interface import (
    MAX_BATCH_PAGES,
    CodecStats,
    PageBatch,
    PageCodec,
    PageDecoder,
    PageEncoder,
)
from novacron_sdk.errors import EncodingError

DEFAULT_CACHE_MIB = 256
# Pages analysed per step while other threads compress the steps before.
SUB_BLOCK = 64
MAX_INDEX = 1 << 63


def _cache_pages(settings: Mapping[str, Any], page_size: int) -> int:
    mib = settings.get("cache_mib", DEFAULT_CACHE_MIB)
    if not isinstance(mib, int | float) or mib < 0:
        msg = f"codec setting cache_mib must be a non-negative number of MiB, not {mib!r}"
        raise EncodingError(msg)
    return int(mib * (1 << 20)) // page_size


class DwcpEncoder(PageEncoder):
    """Encoder half of the chain; one per migration stream, not thread-safe."""

    def __init__(self, page_size: int, settings: Mapping[str, Any]) -> None:
        check_page_size(page_size)
        self.page_size = page_size
        self.cache = IndexedPageCache(_cache_pages(settings, page_size))
        self.threads = settings.get("threads", compress.default_threads())
        if not isinstance(self.threads, int) or self.threads < 1:
            msg = f"codec setting threads must be a positive integer, not {self.threads!r}"
            raise EncodingError(msg)
        self.selector = compress.AdaptiveSelector()
        forced = settings.get("method")
        self.forced = next((m for m in compress.METHODS if m.name == forced), None)
        if forced is not None and self.forced is None:
            names = [m.name for m in compress.METHODS]
            msg = f"codec setting method={forced!r} is unknown; use one of {names}"
            raise EncodingError(msg)
        self.stream_id = os.urandom(8)
        self.streams: stream.StreamEncoder | None = None
        self.seq = 0
        self.state = bytes(STATE_SIZE)
        self.broken = False
        self._stats = CodecStats()

    def set_bandwidth_hint(self, bits_per_second: float) -> None:
        """Use the link's estimated bandwidth to choose between raw, lz4 and zstd levels."""
        self.selector.bandwidth = bits_per_second if bits_per_second > 0 else None

    def stats(self) -> CodecStats:
        """Pages and bytes so far; ``by_kind`` counts pages per operation and batches per method."""
        return self._stats

    def encode(self, batch: PageBatch) -> bytes:
        """One payload for ``batch``; the decoder must see payloads in the same order."""
        if self.broken:
            msg = "this DWCP encoder failed on an earlier batch; start a new encoder and decoder"
            raise EncodingError(msg)
        self._check(batch)
        try:
            return self._encode(batch)
        except BaseException:
            # The cache may be half updated: the decoder can no longer follow this encoder.
            self.broken = True
            raise

    def _check(self, batch: PageBatch) -> None:
        if batch.page_size != self.page_size:
            msg = f"batch has {batch.page_size}-byte pages; this encoder takes {self.page_size}"
            raise EncodingError(msg)
        if len(batch.indices) > MAX_BATCH_PAGES:
            msg = f"batch of {len(batch.indices)} pages; split it into at most {MAX_BATCH_PAGES}"
            raise EncodingError(msg)
        if batch.indices and (min(batch.indices) < 0 or max(batch.indices) >= MAX_INDEX):
            low, high = min(batch.indices), max(batch.indices)
            msg = f"page indices must be in [0, 2**63); got {low}..{high}"
            raise EncodingError(msg)

    def _encode(self, batch: PageBatch) -> bytes:
        size = self.page_size
        data = bytes(batch.data)
        indices = [int(i) for i in batch.indices]
        count = len(indices)
        cache_length = len(self.cache)
        table = np.frombuffer(data, np.uint64).reshape(count, size // 8)
        fingerprints = page_fingerprints(table)
        method = self.forced or self.selector.choose(self.threads)
        streams = self._streams(method)
        # Pages are analysed in sub-blocks while other threads compress the whole pages of the
        # sub-blocks before: the Python work and zstd/lz4 overlap on two or more cores.
        early = streams is None and method.kind != METHOD_RAW and self.threads > 1
        if streams is not None and self.threads > 1:
            step = SUB_BLOCK
        elif early:
            step = max(SUB_BLOCK, -(-count // self.threads))
        else:
            step = max(count, 1)
        work = _Work(count, table, cast("list[int]", fingerprints.tolist()))
        full_chunks: list[Future[tuple[bytes, float]]] = []
        for start in range(0, count, step):
            full_piece, delta_piece = self._analyse(data, indices, work, start, start + step)
            if streams is not None:
                streams.feed((full_piece, delta_piece))
            elif early and len(full_piece):
                full_chunks.append(
                    compress.shared_pool().submit(compress.timed, method, full_piece)
                )
        literal_size = work.literal_size
        if streams is not None:
            chunks, seconds = streams.finish()
            control_method = compress.CONTROL_METHOD
        elif early:
            chunks, seconds = compress.compress_chunks(method, work.delta_pieces, self.threads)
            done = [future.result() for future in full_chunks]
            sizes = [len(piece) for piece in work.full_pieces if len(piece)]
            chunks = [(raw, out) for raw, (out, _) in zip(sizes, done, strict=True)] + chunks
            seconds += sum(took for _, took in done)
            control_method = method
        else:
            chunks, seconds = compress.compress_chunks(method, work.pieces(), self.threads)
            control_method = method
        self.selector.observe(method, literal_size, sum(len(c) for _, c in chunks), seconds)
        control = work.control(indices)
        packed_control = compress.compress(control_method, control)
        header = Header(
            method.kind, method.level, self.seq, self.stream_id, self.state, size,
            self.cache.capacity, cache_length, count, checksum(fingerprints), len(control),
            len(packed_control), literal_size, tuple((raw, len(c)) for raw, c in chunks),
        )  # fmt: skip
        payload = b"".join([header.pack(), packed_control, *(c for _, c in chunks)])
        self.state = next_state(self.state, control)
        self.seq += 1
        self._count(work.ops, len(data), len(payload), method.name)
        return payload

    def _streams(self, method: compress.Method) -> stream.StreamEncoder | None:
        if method.kind != METHOD_ZSTD_LONG:
            return None
        if self.streams is None:
            self.streams = stream.StreamEncoder(method.level, parallel=self.threads > 1)
        return self.streams

    def _analyse(
        self, data: bytes, indices: list[int], work: _Work, start: int, stop: int
    ) -> tuple[memoryview, memoryview]:
        """Classify pages start..stop, compute their deltas; return their literal pieces."""
        table = work.table
        full, delta_pages, bases = self._classify(data, indices, work, start, min(stop, work.count))
        delta_words = np.zeros(0, np.uint64)
        if delta_pages:
            pages = np.array(delta_pages, np.int64)
            rows = table[pages]
            old = np.frombuffer(b"".join(bases), np.uint64).reshape(len(bases), table.shape[1])
            found = delta.compute(rows, old)
            work.run_counts.append(found.run_counts)
            work.offsets.append((found.offsets * 8).astype(np.uint16))
            work.lengths.append((found.lengths * 8).astype(np.uint16))
            delta_words = delta.gather(rows, found.run_rows, found.offsets, found.lengths)
            fallback = pages[~found.use_delta]
            if fallback.size:
                # These deltas would not be smaller than the page: send the page instead.
                np.frombuffer(work.ops, np.uint8)[fallback] = OP_FULL
                full = sorted(full + fallback.tolist())
        full_rows = table[full] if len(full) < len(table) else table
        pieces = (full_rows.reshape(-1).view(np.uint8).data, delta_words.view(np.uint8).data)
        work.full_pieces.append(pieces[0])
        work.delta_pieces.append(pieces[1])
        return pieces

    def _classify(
        self, data: bytes, indices: list[int], work: _Work, start: int, stop: int
    ) -> tuple[list[int], list[int], list[bytes]]:
        """Decide the operation of pages start..stop and update the cache as the decoder will."""
        size = self.page_size
        nonzero = cast("list[bool]", work.table[start:stop].any(axis=1).tolist())
        keys = work.keys
        cache = self.cache
        pages = cache.pages
        ops = work.ops
        refs = work.refs
        full: list[int] = []
        delta_pages: list[int] = []
        bases: list[bytes] = []
        for k in range(start, stop):
            index = indices[k]
            if not nonzero[k - start]:
                # ops[k] is already OP_ZERO.
                if index in pages:
                    cache.drop(index)
                continue
            page = data[k * size : (k + 1) * size]
            old = pages.get(index)
            if old is not None and old == page:
                ops[k] = OP_SAME
                pages.move_to_end(index)
                continue
            ref = cache.find(page, keys[k])
            if ref is not None:
                ops[k] = OP_DUP
                refs.append(ref)
                # Share the cached object: identical pages cost memory once.
                page = pages[ref]
            elif old is not None:
                ops[k] = OP_DELTA
                delta_pages.append(k)
                bases.append(old)
            else:
                ops[k] = OP_FULL
                full.append(k)
            cache.put_indexed(index, page, keys[k])
        return full, delta_pages, bases

    def _count(self, ops: bytearray, bytes_in: int, bytes_out: int, method: str) -> None:
        stats = self._stats
        stats.pages_in += len(ops)
        stats.bytes_in += bytes_in
        stats.bytes_out += bytes_out
        kinds = stats.by_kind
        for op, name in enumerate(OP_NAMES):
            found = ops.count(op)
            if found:
                kinds[name] = kinds.get(name, 0) + found
        key = f"batches:{method}"
        kinds[key] = kinds.get(key, 0) + 1


class _Work:
    """What the analysis of one batch produced so far, in page order."""

    def __init__(self, count: int, table: np.ndarray, keys: list[int]) -> None:
        self.count = count
        self.table = table
        self.keys = keys
        self.ops = bytearray(count)
        self.refs: list[int] = []
        self.run_counts: list[np.ndarray] = []
        self.offsets: list[np.ndarray] = []
        self.lengths: list[np.ndarray] = []
        self.full_pieces: list[memoryview] = []
        self.delta_pieces: list[memoryview] = []

    @property
    def literal_size(self) -> int:
        """Bytes of whole pages and delta runs."""
        return sum(len(p) for p in self.full_pieces) + sum(len(p) for p in self.delta_pieces)

    def pieces(self) -> list[memoryview]:
        """The literal section: every whole page, then every delta run."""
        return self.full_pieces + self.delta_pieces

    def control(self, indices: list[int]) -> bytes:
        """The control section: ops, index deltas, references, run counts, offsets, lengths."""
        index_array = np.array(indices, np.uint64)
        parts = [bytes(self.ops), np.diff(index_array, prepend=np.uint64(0)).tobytes()]
        parts.append(np.array(self.refs, np.uint64).tobytes())
        for arrays in (self.run_counts, self.offsets, self.lengths):
            parts.extend(array.tobytes() for array in arrays)
        return b"".join(parts)


class DwcpCodec(PageCodec):
    """The DWCP chain. Settings: ``cache_mib`` (256), ``threads`` (cores, at most 8),
    ``method`` (force one of raw, lz4, zstd-1, zstd-3, zstd-6, zstd-12), ``max_cache_mib``
    (decoder's limit on the encoder's declared cache, 4096)."""

    name: ClassVar[str] = "dwcp"

    def new_encoder(self, page_size: int = 4096) -> PageEncoder:
        """A fresh encoder with an empty cache and a new stream id."""
        return DwcpEncoder(page_size, self.settings)

    def new_decoder(self, page_size: int = 4096) -> PageDecoder:
        """A fresh decoder; it adopts the stream of the first payload it decodes (batch 0)."""
        return DwcpDecoder(page_size, self.settings)


__all__ = ["DwcpCodec", "DwcpDecoder", "DwcpEncoder"]
