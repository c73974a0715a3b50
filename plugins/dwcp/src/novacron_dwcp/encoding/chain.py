"""The DWCP codec chain (HDE): zero pages, duplicates, deltas, then adaptive zstd/lz4.

Each batch goes through: zero-page elimination; unchanged pages (same as the receiver's
cached version); duplicate elimination (a reference to a held page with identical content, or
to an earlier page of the batch); an XBZRLE-like delta against the receiver's cached version
of the page; full pages otherwise. All of it is decided for the whole batch at once with numpy
(``classify``). The control data and the literal bytes are then compressed with the method the
adaptive selector picks, in parallel chunks, while the encoder updates its page store.
Encoder and decoder keep identical bounded page stores; every payload carries
the batch sequence number, the stream id, a rolling digest of all earlier control data, the
cache length and a checksum of every page of the batch, so a decoder out of step
raises DesyncError instead of returning wrong pages.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from novacron_dwcp.encoding import compress, stream
from novacron_dwcp.encoding.cache import IndexedPageStore
from novacron_dwcp.encoding.classify import Classified, classify, merge
from novacron_dwcp.encoding.decoder import DwcpDecoder
from novacron_dwcp.encoding.integrity import STATE_SIZE, checksum, next_state
from novacron_dwcp.encoding.wire import (
    MAX_CHUNKS,
    METHOD_ZSTD_LONG,
    OP_NAMES,
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
# Below this many pages per thread a batch is not split: the hand-off would cost more.
MIN_PART_PAGES = 64
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
        self.cache = IndexedPageStore(_cache_pages(settings, page_size), page_size // 8)
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
            # The store may be half updated: the decoder can no longer follow this encoder.
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
        indices = [int(i) for i in batch.indices]
        count = len(indices)
        table = np.frombuffer(batch.data, np.uint64).reshape(count, size // 8)
        cache_length = len(self.cache)
        slots = self.cache.lookup(indices) if cache_length else np.full(count, -1, np.int64)
        method = self.forced or self.selector.choose(self.threads)
        streams = self._streams(method)
        # Consecutive parts of the batch are classified each on a thread, and each part's
        # literals are compressed on the pool as soon as it is classified, while this thread
        # classifies, then updates the store: all of them only read the batch and the store.
        parts = max(1, min(self.threads, count // MIN_PART_PAGES, MAX_CHUNKS // 2))
        starts = [count * i // parts for i in range(parts)]
        ends = [*starts[1:], count]
        pool = compress.shared_pool() if self.threads > 1 else None
        classify_part = functools.partial(self._classify_part, table, slots)
        later = zip(starts[1:], ends[1:], strict=True)
        # parts > 1 only with threads > 1, hence with a pool.
        jobs = [pool.submit(classify_part, a, b) for a, b in later] if pool else []
        done = [classify_part(starts[0], ends[0])]
        packing: list[Future[_Compressed] | _Compressed] = []
        for number in range(parts):
            if number:
                done.append(jobs[number - 1].result())
            if streams is None:
                pieces = done[number][1]
                packing.append(
                    pool.submit(_compress_pieces, method, pieces)
                    if pool
                    else _compress_pieces(method, pieces)
                )
        found = merge([part for part, _ in done], starts)
        control = found.control(indices)
        if streams is not None:
            pieces = done[0][1] if parts == 1 else _pieces(table, found)
            streams.feed(pieces)
            self._probe_on_the_side(pieces)
        written, slots = self.cache.update(
            indices, table, found.ops, found.slots, found.sources
        )  # fmt: skip
        self.cache.index(slots, found.fingerprints[written])
        if streams is not None:
            chunks, seconds = streams.finish()
            control_method = compress.CONTROL_METHOD
        else:
            packed = [job.result() if isinstance(job, Future) else job for job in packing]
            # The literal section: every part's whole pages, then every part's delta bytes.
            chunks = [c for out in packed for c in out.chunks[:1] if c[0]]
            chunks += [c for out in packed for c in out.chunks[1:] if c[0]]
            seconds = sum(out.seconds for out in packed)
            control_method = method
        literal_size = sum(raw for raw, _ in chunks)
        self.selector.observe(method, literal_size, sum(len(c) for _, c in chunks), seconds)
        packed_control = compress.compress(control_method, control)
        header = Header(
            method.kind, method.level, self.seq, self.stream_id, self.state, size,
            self.cache.capacity, cache_length, count, checksum(found.fingerprints), len(control),
            len(packed_control), literal_size, tuple((raw, len(c)) for raw, c in chunks),
        )  # fmt: skip
        payload = b"".join([header.pack(), packed_control, *(c for _, c in chunks)])
        self.state = next_state(self.state, control)
        self.seq += 1
        self._count(found, len(batch.data), len(payload), method.name)
        return payload

    def _classify_part(
        self, table: np.ndarray, slots: np.ndarray, start: int, stop: int
    ) -> tuple[Classified, list[memoryview]]:
        """Classify rows start..stop; their literal pieces (whole pages, delta bytes)."""
        found = classify(table[start:stop], slots[start:stop], self.cache)
        return found, _pieces(table[start:stop], found)

    def _probe_on_the_side(self, pieces: list[memoryview]) -> None:
        """Measure the selector's probe method on a copy of the literals (sent with streams)."""
        probe = self.selector.shadow
        if probe is None:
            return
        out = _compress_pieces(probe, pieces)
        raw = sum(size for size, _ in out.chunks)
        self.selector.observe(probe, raw, sum(len(c) for _, c in out.chunks), out.seconds)

    def _streams(self, method: compress.Method) -> stream.StreamEncoder | None:
        if method.kind != METHOD_ZSTD_LONG:
            return None
        if self.streams is None:
            self.streams = stream.StreamEncoder(method.level, parallel=self.threads > 1)
        return self.streams

    def _count(self, found: Classified, bytes_in: int, bytes_out: int, method: str) -> None:
        stats = self._stats
        stats.pages_in += len(found.ops)
        stats.bytes_in += bytes_in
        stats.bytes_out += bytes_out
        kinds = stats.by_kind
        counts = np.bincount(found.ops, minlength=len(OP_NAMES)).tolist()
        for name, number in zip(OP_NAMES, counts, strict=True):
            if number:
                kinds[name] = kinds.get(name, 0) + number
        key = f"batches:{method}"
        kinds[key] = kinds.get(key, 0) + 1


def _pieces(table: np.ndarray, found: Classified) -> list[memoryview]:
    """The literal pieces of a batch (or part): its whole pages, then its delta bytes."""
    full = found.full_rows
    # No copy when every page goes whole.
    rows = table if full.size == len(table) else table[full]
    return [rows.reshape(-1).view(np.uint8).data, found.delta_words.view(np.uint8).data]


@dataclass
class _Compressed:
    """The compressed literal pieces of one part, and the seconds it took."""

    chunks: list[tuple[int, bytes]] = field(default_factory=list)
    seconds: float = 0.0


def _compress_pieces(method: compress.Method, pieces: list[memoryview]) -> _Compressed:
    """Each piece as one chunk (empty pieces stay empty)."""
    out = _Compressed()
    for piece in pieces:
        packed, took = compress.timed(method, piece) if len(piece) else (b"", 0.0)
        out.chunks.append((len(piece), packed))
        out.seconds += took
    return out


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
