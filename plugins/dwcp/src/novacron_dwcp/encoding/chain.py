"""The DWCP codec chain (HDE): zero pages, duplicates, deltas, then adaptive zstd/lz4.

Each batch goes through: zero-page elimination; unchanged pages (same as the receiver's
cached version); duplicate elimination (a reference to a held page with identical content, or
to an earlier page of the batch); an XBZRLE-like delta against the receiver's cached version
of the page; full pages otherwise. All of it is decided for the whole batch at once, in one
native pass (``native``) or, without the extension, with numpy (``classify``): same payloads.
The control data and the literal bytes are then compressed with the method the
adaptive selector picks, in parallel chunks, while the encoder updates its page store.
Encoder and decoder keep identical bounded page stores; every payload carries
the batch sequence number, the stream id, a rolling digest of all earlier control data, the
cache length and a hash of the whole payload and of its pages' fingerprints, so a corrupt
payload or a decoder out of step raises an error instead of returning wrong pages.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from novacron_dwcp.encoding import compress, native, references, stream
from novacron_dwcp.encoding.cache import IndexedPageStore
from novacron_dwcp.encoding.classify import Classified, classify
from novacron_dwcp.encoding.decoder import DwcpDecoder
from novacron_dwcp.encoding.integrity import STATE_SIZE, batch_hash, fingerprints, next_state
from novacron_dwcp.encoding.settings import check_settings
from novacron_dwcp.encoding.wire import (
    FLAG_NEW_STREAMS,
    MAX_CHUNKS,
    METHOD_ZSTD_LONG,
    OP_NAMES,
    Header,
    check_page_size,
    hashed_spans,
)
from novacron_sdk.encoding.interface import (
    MAX_BATCH_PAGES,
    CodecStats,
    PageBatch,
    PageCodec,
    PageEncoder,
)
from novacron_sdk.errors import EncodingError

DEFAULT_CACHE_MIB = 256
MAX_INDEX = references.REFERENCE_BASE


def _cache_pages(settings: Mapping[str, Any], page_size: int) -> int:
    mib = settings.get("cache_mib", DEFAULT_CACHE_MIB)
    if not isinstance(mib, int | float) or mib < 0:
        msg = f"codec setting cache_mib must be a non-negative number of MiB, not {mib!r}"
        raise EncodingError(msg)
    pages = int(mib * (1 << 20)) // page_size
    if pages >= 1 << 32:
        msg = f"codec setting cache_mib={mib!r} is {pages} pages; the wire format allows < 2**32"
        raise EncodingError(msg)
    return pages


class DwcpEncoder(PageEncoder):
    """Encoder half of the chain; one per migration stream, not thread-safe."""

    def __init__(self, page_size: int, settings: Mapping[str, Any]) -> None:
        check_page_size(page_size)
        check_settings(settings)
        self.page_size = page_size
        self.cache = IndexedPageStore(_cache_pages(settings, page_size), page_size // 8)
        self.threads = settings.get("threads", compress.default_threads())
        if not isinstance(self.threads, int) or self.threads < 1:
            msg = f"codec setting threads must be a positive integer, not {self.threads!r}"
            raise EncodingError(msg)
        self.native = native.setting(settings)
        self.scratch = native.Scratch()
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
        reference_pages = references.load(settings, page_size, self.cache.capacity)
        self.state = bytes(STATE_SIZE)
        self.reference_pages = 0
        if reference_pages is not None:
            table = reference_pages.table
            slots = self.cache.preload(table, references.REFERENCE_BASE)
            self.cache.index(slots, fingerprints(table))
            self.reference_pages = len(table)
            self.state = reference_pages.seed
        self.broken = False
        self._stats = CodecStats()

    def set_bandwidth_hint(self, bits_per_second: float) -> None:
        """Use the link's estimated bandwidth to choose between raw, lz4 and zstd levels."""
        self.selector.bandwidth = bits_per_second if bits_per_second > 0 else None

    def stats(self) -> CodecStats:
        """Pages and bytes so far; ``by_kind`` counts pages per operation and batches per
        method; ``seconds``: ``classify`` (the batch's pages sorted and their literals
        gathered), ``store`` (the page store updated), ``compress`` (the literal sections
        compressed, summed over the threads that did it) and ``encode`` (the whole of
        ``encode``, wall-clock, with the control section and the selector's probes)."""
        return self._stats

    def encode(self, batch: PageBatch) -> bytes:
        """One payload for ``batch``; the decoder must see payloads in the same order."""
        if self.broken:
            msg = "this DWCP encoder failed on an earlier batch; start a new encoder and decoder"
            raise EncodingError(msg)
        self._check(batch)
        started = time.perf_counter()
        try:
            payload = self._encode(batch)
        except BaseException:
            # The store may be half updated: the decoder can no longer follow this encoder.
            self.broken = True
            raise
        self._time("encode", time.perf_counter() - started)
        return payload

    def _check(self, batch: PageBatch) -> None:
        if batch.page_size != self.page_size:
            msg = f"batch has {batch.page_size}-byte pages; this encoder takes {self.page_size}"
            raise EncodingError(msg)
        if len(batch.indices) > MAX_BATCH_PAGES:
            msg = f"batch of {len(batch.indices)} pages; split it into at most {MAX_BATCH_PAGES}"
            raise EncodingError(msg)
        if batch.indices and (min(batch.indices) < 0 or max(batch.indices) >= MAX_INDEX):
            low, high = min(batch.indices), max(batch.indices)
            msg = f"page indices must be in [0, 2**62); got {low}..{high}"
            raise EncodingError(msg)

    def _encode(self, batch: PageBatch) -> bytes:
        size = self.page_size
        indices = list(map(int, batch.indices))
        count = len(indices)
        table = np.frombuffer(batch.data, np.uint64).reshape(count, size // 8)
        cache_length = len(self.cache)
        slots = self.cache.lookup(indices) if cache_length else np.full(count, -1, np.int64)
        method = self.forced or self.selector.choose(self.threads)
        streams, flags = self._streams(method)
        # One pass classifies the whole batch and gathers its literals; their compression
        # then runs on the pool (the whole pages cut into a chunk per thread) while this
        # thread updates the store, which the compression does not read.
        started = time.perf_counter()
        found, pieces = self._classify(table, slots)
        control = found.control(indices)
        self._time("classify", time.perf_counter() - started)
        mine: list[memoryview] = []
        later: list[Future[_Compressed]] = []
        if streams is not None:
            streams.feed(pieces)
            self._probe_on_the_side(pieces)
        else:
            mine, others = self._split(pieces)
            pool = compress.shared_pool() if others else None
            later = [pool.submit(_compress_pieces, method, [p]) for p in others] if pool else []
        started = time.perf_counter()
        written, slots = self.cache.update(
            indices, table, found.ops, found.slots, found.sources
        )  # fmt: skip
        self.cache.index(slots, found.fingerprints[written])
        self._time("store", time.perf_counter() - started)
        if streams is not None:
            chunks, seconds = streams.finish()
            control_method = compress.CONTROL_METHOD
        else:
            # This thread compresses its share once the store is updated.
            packed = [_compress_pieces(method, mine), *(job.result() for job in later)]
            chunks = [chunk for out in packed for chunk in out.chunks if chunk[0]]
            seconds = sum(out.seconds for out in packed)
            control_method = method
        self._time("compress", seconds)
        literal_size = sum(raw for raw, _ in chunks)
        # The first batch of new streams also paid for their setup: its time is not their speed.
        timing = None if flags & FLAG_NEW_STREAMS else seconds
        self.selector.observe(method, literal_size, sum(len(c) for _, c in chunks), timing)
        packed_control = compress.compress(control_method, control)
        header = Header(
            method.kind, method.level, self.seq, self.stream_id, self.state, size,
            self.cache.capacity, cache_length, count, 0, len(control), len(packed_control),
            literal_size, tuple((raw, len(c)) for raw, c in chunks), flags,
        )  # fmt: skip
        # The batch hash covers every byte sent (the compressed sections: cheaper to hash
        # than the literals they decode to) and the pages' fingerprints.
        sections = [packed_control, *(c for _, c in chunks)]
        spans: list[bytes | memoryview] = [*hashed_spans(header.pack()), *sections]
        header = replace(header, checksum=batch_hash(spans, found.fingerprints))
        payload = b"".join([header.pack(), *sections])
        self.state = next_state(self.state, control)
        self.seq += 1
        self._count(found, len(batch.data), len(payload), method.name)
        return payload

    def _classify(
        self, table: np.ndarray, slots: np.ndarray
    ) -> tuple[Classified, list[memoryview]]:
        """Classify the batch; its literal pieces (whole pages, delta bytes)."""
        if self.native:
            return native.classify_batch(table, slots, self.cache, self.scratch)
        found = classify(table, slots, self.cache)
        return found, _pieces(table, found)

    def _split(self, pieces: list[memoryview]) -> tuple[list[memoryview], list[memoryview]]:
        """The literal pieces as chunks, the whole pages cut into up to one per thread:
        (this thread's chunks, the pool's), in literal-section order."""
        whole, deltas = pieces
        page_count = len(whole) // self.page_size
        parts = max(1, min(self.threads, len(whole) // compress.MIN_CHUNK, MAX_CHUNKS - 1))
        if parts == 1:
            return pieces, []
        cuts = [page_count * i // parts * self.page_size for i in range(parts + 1)]
        chunks = [whole[a:b] for a, b in itertools.pairwise(cuts)]
        return chunks[:1], [*chunks[1:], deltas]

    def _probe_on_the_side(self, pieces: list[memoryview]) -> None:
        """Measure the selector's probe method on a copy of the literals (sent with streams)."""
        probe = self.selector.shadow
        if probe is None:
            return
        out = _compress_pieces(probe, pieces)
        raw = sum(size for size, _ in out.chunks)
        self.selector.observe(probe, raw, sum(len(c) for _, c in out.chunks), out.seconds)

    def _streams(self, method: compress.Method) -> tuple[stream.StreamEncoder | None, int]:
        """The long-window streams for ``method`` (None for other methods), and header flags.

        Streams cannot change level: another level means new streams (and an empty history),
        which the selector weighs before it asks for one.
        """
        if method.kind != METHOD_ZSTD_LONG:
            return None, 0
        if self.streams is not None and self.streams.level == method.level:
            return self.streams, 0
        self.streams = stream.StreamEncoder(method.level, parallel=self.threads > 1)
        self.selector.streams_started(method.level)
        return self.streams, FLAG_NEW_STREAMS

    def _time(self, stage: str, seconds: float) -> None:
        spent = self._stats.seconds
        spent[stage] = spent.get(stage, 0.0) + seconds

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
    ``method`` (force one of the methods of ``compress.METHODS``), ``max_cache_mib``
    (decoder's limit on the encoder's declared cache, 4096), ``native`` (use the compiled
    hot paths at both ends; True when they were built, False forces the numpy fallback: same
    payloads, same pages)."""

    name: ClassVar[str] = "dwcp"

    def new_encoder(self, page_size: int = 4096) -> DwcpEncoder:
        """A fresh encoder with an empty cache and a new stream id."""
        return DwcpEncoder(page_size, self.settings)

    def new_decoder(self, page_size: int = 4096) -> DwcpDecoder:
        """A fresh decoder; it adopts the stream of the first payload it decodes (batch 0)."""
        return DwcpDecoder(page_size, self.settings)


__all__ = ["DwcpCodec", "DwcpDecoder", "DwcpEncoder"]
