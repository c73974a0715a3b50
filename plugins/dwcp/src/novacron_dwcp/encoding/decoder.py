"""Decoder half of the DWCP chain: rebuilds batches, keeps the encoder's cache, detects desync."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from novacron_dwcp.encoding import compress, native, references, stream
from novacron_dwcp.encoding.cache import PageStore
from novacron_dwcp.encoding.classify import fingerprint_rows
from novacron_dwcp.encoding.integrity import STATE_SIZE, batch_hash, next_state
from novacron_dwcp.encoding.settings import check_settings
from novacron_dwcp.encoding.wire import (
    FLAG_NEW_STREAMS,
    METHOD_ZSTD,
    METHOD_ZSTD_LONG,
    OP_COPY,
    OP_DELTA,
    OP_DUP,
    OP_FULL,
    OP_SAME,
    OP_ZERO,
    Header,
    check_page_size,
    hashed_spans,
    parse_header,
)
from novacron_sdk.encoding.interface import MAX_BATCH_PAGES, PageBatch, PageDecoder
from novacron_sdk.errors import DesyncError, EncodingError

SCATTER_BYTES = 1 << 20


class DwcpDecoder(PageDecoder):
    """Decoder half of the chain: rebuilds batches and keeps the same cache as the encoder."""

    def __init__(self, page_size: int, settings: Mapping[str, Any]) -> None:
        check_page_size(page_size)
        check_settings(settings)
        self.page_size = page_size
        # The encoder declares its cache size; this bounds what the decoder agrees to hold.
        max_mib = settings.get("max_cache_mib", 4096)  # checked by check_settings
        self.max_cache_pages = int(max_mib * (1 << 20)) // page_size
        self.cache: PageStore | None = None
        self.stream_id = b""
        self.streams: stream.StreamDecoder | None = None
        self.seq = 0
        self.references = references.load(settings, page_size, self.max_cache_pages)
        self.native = native.setting(settings)
        self.state = self.references.seed if self.references is not None else bytes(STATE_SIZE)
        self.broken = False

    def decode(self, payload: bytes) -> PageBatch:
        """The batch ``payload`` encodes.

        Raises DesyncError when out of step with the encoder, EncodingError when malformed.
        """
        if self.broken:
            msg = (
                "this DWCP decoder failed on an earlier payload and is out of step; "
                "restart the stream with a new encoder and decoder"
            )
            raise DesyncError(msg)
        header = parse_header(payload, self.page_size)
        cache = self._check_step(header)
        # Everything is checked against the control section before a lane is read: once a
        # long-window stream has consumed part of a payload, any failure breaks the decoder.
        control = self._control(payload, header)
        plan = _Plan.parse(control, header)
        streams = self._streams_for(header)
        if streams is not None:
            self._check_literal_sizes(plan, header)
        chunks = self._chunks(payload, header)
        try:
            if streams is not None:
                literal = streams.decompress(chunks)
            else:
                literal = compress.decompress_chunks(header.method, chunks) if chunks else b""
        except BaseException:
            # A long-window stream has consumed part of the bad payload: it cannot go on.
            self.broken = streams is not None
            raise
        if streams is None:
            # Independent frames (a frame that declares too much is refused first, above):
            # nothing was consumed, so the decoder stays usable.
            self._check_literal_sizes(plan, header)
        try:
            if len(literal) != header.literal_raw:
                msg = "literal section size does not match its declared size: payload corrupt"
                raise EncodingError(msg)
            data, table = self._rebuild(plan, literal, cache)
            nonzero = np.flatnonzero(plan.ops != OP_ZERO)
            prints = fingerprint_rows(table, nonzero)
            matches = batch_hash(hashed_spans(payload), prints) == header.checksum
        except BaseException:
            self.broken = True
            raise
        if not matches:
            # Nothing was stored: with independent frames the decoder can take the right
            # payload next (zstd frames carry no checksum of their own: a corrupt chunk that
            # still decompresses is found here). A long-window stream has consumed it.
            self.broken = streams is not None
            msg = (
                f"batch {header.seq}: the payload or the rebuilt pages do not match the "
                "encoder's checksum: the payload is corrupt, or this decoder's state diverged "
                "from the encoder's (restart the stream with a new encoder and decoder)"
            )
            raise DesyncError(msg)
        try:
            cache.update(plan.indices, table, plan.ops, plan.slots, plan.sources)
        except BaseException:
            self.broken = True
            raise
        # New streams are adopted only now: a payload refused before its lanes were read
        # leaves the old ones (and their history) in place; a batch sent in independent
        # frames leaves them for the next long-window batch.
        if streams is not None:
            self.streams = streams
        if self.cache is None:
            # Adopted only now: a corrupt first payload must not bind the decoder to it.
            self.cache, self.stream_id = cache, header.stream_id
        self.state = next_state(self.state, control)
        self.seq += 1
        return PageBatch(plan.indices, data, self.page_size)

    def _check_step(self, header: Header) -> PageStore:
        """The cache to decode ``header``'s batch with, if the payload is the next one."""
        if self.cache is None:
            if header.seq != 0:
                msg = (
                    f"first payload seen has batch number {header.seq}, not 0: "
                    "earlier payloads are missing"
                )
                raise DesyncError(msg)
            if header.cache_capacity > self.max_cache_pages:
                msg = (
                    f"encoder asks for a {header.cache_capacity}-page cache; this decoder allows "
                    f"{self.max_cache_pages} (raise the max_cache_mib codec setting)"
                )
                raise EncodingError(msg)
            cache = PageStore(header.cache_capacity, self.page_size // 8)
            if self.references is not None:
                if len(self.references) > header.cache_capacity // references.MAX_SHARE:
                    msg = (
                        f"the reference files hold {len(self.references)} pages, more than half "
                        f"the encoder's {header.cache_capacity}-page cache: the encoder cannot "
                        "have been given the same files"
                    )
                    raise DesyncError(msg)
                cache.preload(self.references.table, references.REFERENCE_BASE)
            stream_id = header.stream_id
        else:
            cache, stream_id = self.cache, self.stream_id
        if header.stream_id != stream_id:
            msg = "payload belongs to another encoder's stream; each decoder follows one encoder"
            raise DesyncError(msg)
        if header.seq != self.seq:
            msg = (
                f"expected batch {self.seq}, got batch {header.seq}: "
                "payloads were lost, repeated or reordered"
            )
            raise DesyncError(msg)
        if header.state != self.state or header.cache_length != len(cache):
            msg = f"batch {header.seq}: encoder and decoder state differ; restart the stream"
            if header.seq == 0:
                msg = (
                    "batch 0: encoder and decoder start from different states: give both ends "
                    "the same reference_files (same content, same order), or none to either"
                )
            raise DesyncError(msg)
        if header.cache_capacity != cache.capacity:
            msg = "the encoder changed its cache size mid-stream: payload corrupt"
            raise EncodingError(msg)
        return cache

    def _control(self, payload: bytes, header: Header) -> bytes:
        """The decoded control section."""
        view = memoryview(payload)[header.size : header.size + header.control_compressed]
        kind = METHOD_ZSTD if header.method == METHOD_ZSTD_LONG else header.method
        return compress.decompress(kind, view, header.control_raw)

    def _check_literal_sizes(self, plan: _Plan, header: Header) -> None:
        """EncodingError unless the literal section (and each stream lane) has the size the
        control section implies: whole pages, then delta bytes."""
        whole = plan.full_count * self.page_size
        if whole + plan.delta_literal_bytes != header.literal_raw:
            msg = "literal section size does not match the pages it should carry: payload corrupt"
            raise EncodingError(msg)
        lanes = tuple(raw for raw, _ in header.chunks)
        if header.method == METHOD_ZSTD_LONG and lanes != (whole, plan.delta_literal_bytes):
            msg = "stream lane sizes do not match the pages they should carry: payload corrupt"
            raise EncodingError(msg)

    def _streams_for(self, header: Header) -> stream.StreamDecoder | None:
        """The long-window streams to read ``header``'s lanes with (new ones are adopted by
        ``decode`` only once the payload decoded), or None for independent chunks."""
        if header.method != METHOD_ZSTD_LONG:
            return None
        if header.flags & FLAG_NEW_STREAMS:
            # The encoder started new streams: the old ones (and their window) go.
            return stream.StreamDecoder(MAX_BATCH_PAGES * self.page_size)
        if self.streams is None:
            msg = "payload continues long-window streams this decoder never saw: corrupt"
            raise EncodingError(msg)
        return self.streams

    @staticmethod
    def _chunks(payload: bytes, header: Header) -> list[tuple[int, memoryview]]:
        view = memoryview(payload)
        position = header.size + header.control_compressed
        chunks: list[tuple[int, memoryview]] = []
        for raw, length in header.chunks:
            chunks.append((raw, view[position : position + length]))
            position += length
        return chunks

    def _rebuild(self, plan: _Plan, literal: bytes, cache: PageStore) -> tuple[bytes, np.ndarray]:
        """The batch's pages, read from the store as it was before the batch and the literals:
        as the bytes to return, and as a (pages, words) table over them."""
        words = self.page_size // 8
        ops = plan.ops
        slots = plan.slots = cache.lookup(plan.indices)
        based = np.flatnonzero((ops == OP_SAME) | (ops == OP_DELTA))
        _check_held([plan.indices[k] for k in based[slots[based] < 0].tolist()])
        plan.sources = cache.lookup(plan.dup_refs)
        _check_held([plan.dup_refs[k] for k in np.flatnonzero(plan.sources < 0).tolist()])
        if self.native:
            data = native.rebuild(
                ops, slots, plan.sources, copies=(plan.copy_rows, plan.copy_refs),
                runs=(plan.run_counts, plan.offsets, plan.lengths), literal=literal,
                slab=cache.slab, page_size=self.page_size,
            )  # fmt: skip
            return data, np.frombuffer(data, np.uint64).reshape(len(ops), words)
        table = np.zeros((len(ops), words), np.uint64)
        rows_of = {op: np.flatnonzero(ops == op) for op in (OP_SAME, OP_DUP, OP_DELTA, OP_FULL)}
        for op in (OP_SAME, OP_DELTA):
            rows = rows_of[op]
            table[rows] = cache.slab[slots[rows]]
        table[rows_of[OP_DUP]] = cache.slab[plan.sources]
        full = rows_of[OP_FULL]
        whole = np.frombuffer(literal, np.uint64, full.size * words)
        table[full] = whole.reshape(full.size, words)
        plan.apply_all(table.reshape(-1).view(np.uint8), self.page_size, rows_of[OP_DELTA], literal)
        # References point to earlier rows that are not copies: those are all final by now.
        table[plan.copy_rows] = table[plan.copy_refs]
        return table.tobytes(), table


def _check_held(missing: list[int]) -> None:
    if missing:
        msg = f"payload refers to page {missing[0]}, which this decoder does not hold"
        raise DesyncError(msg)


def _page_indices(index_deltas: np.ndarray) -> list[int]:
    """The batch's page indices from their deltas; EncodingError past the batches' range."""
    indices = np.cumsum(index_deltas, dtype=np.uint64)
    if indices.size and int(indices.max()) >= references.REFERENCE_BASE:
        msg = "a page index is out of range (batches use indices below 2**62): payload corrupt"
        raise EncodingError(msg)
    result: list[int] = indices.tolist()
    return result


class _Plan:
    """The parsed, bound-checked control section of one payload."""

    __slots__ = (
        "copy_refs", "copy_rows", "delta_literal_bytes", "dup_refs", "full_count", "indices",
        "lengths", "offsets", "ops", "run_counts", "run_first", "run_literal", "slots", "sources",
    )  # fmt: skip

    def __init__(self) -> None:
        empty = np.zeros(0, np.int64)
        self.ops = np.zeros(0, np.uint8)
        self.indices: list[int] = []
        self.dup_refs: list[int] = []
        self.slots = self.sources = self.copy_rows = self.copy_refs = empty
        # Per delta: its number of runs and its first run; per run: offset, length, and
        # where its bytes start in the literal section.
        self.run_counts = self.run_first = empty
        self.offsets = self.lengths = self.run_literal = empty
        self.full_count = 0
        self.delta_literal_bytes = 0

    @classmethod
    def parse(cls, control: bytes, header: Header) -> _Plan:
        """Split the control section, checking every count against the others."""
        plan = cls()
        count = header.page_count
        size = header.page_size
        ops = np.frombuffer(control, np.uint8, min(count, len(control)))
        if len(ops) != count or (count and int(ops.max()) > OP_COPY):
            msg = "control section holds an unknown page operation: payload corrupt"
            raise EncodingError(msg)
        tally = np.bincount(ops, minlength=OP_COPY + 1)
        dups, deltas, copies = int(tally[OP_DUP]), int(tally[OP_DELTA]), int(tally[OP_COPY])
        if len(control) < count * 9 + (dups + copies) * 8 + deltas * 2:
            msg = "control section is shorter than its page operations need: payload corrupt"
            raise EncodingError(msg)
        position = count
        index_deltas = np.frombuffer(control, np.uint64, count, position)
        position += 8 * count
        refs = np.frombuffer(control, np.uint64, dups + copies, position)
        position += 8 * (dups + copies)
        run_counts = np.frombuffer(control, np.uint16, deltas, position).astype(np.int64)
        position += 2 * deltas
        runs = int(run_counts.sum())
        if len(control) != position + 4 * runs:
            msg = "control section size does not match its own counts: payload corrupt"
            raise EncodingError(msg)
        offsets = np.frombuffer(control, np.uint16, runs, position).astype(np.int64)
        lengths = np.frombuffer(control, np.uint16, runs, position + 2 * runs).astype(np.int64)
        if runs and (int((offsets + lengths).max()) > size or int(lengths.min()) == 0):
            msg = "a delta run reaches past the end of its page: payload corrupt"
            raise EncodingError(msg)
        referenced = np.flatnonzero((ops == OP_DUP) | (ops == OP_COPY))
        is_copy = ops[referenced] == OP_COPY
        plan.copy_rows = referenced[is_copy]
        copy_refs = refs[is_copy]
        # A copy names an earlier row that is not itself a copy (so one pass rebuilds it).
        if copy_refs.size and (
            bool((copy_refs >= plan.copy_rows.astype(np.uint64)).any())
            or bool((ops[copy_refs.astype(np.int64)] == OP_COPY).any())
        ):
            msg = "a copy refers to a later page or to another copy: payload corrupt"
            raise EncodingError(msg)
        plan.copy_refs = copy_refs.astype(np.int64)
        plan.dup_refs = refs[~is_copy].tolist()
        plan.ops = ops
        plan.indices = _page_indices(index_deltas)
        plan.full_count = int(tally[OP_FULL])
        plan.run_counts = run_counts
        plan.run_first = np.cumsum(run_counts) - run_counts
        plan.offsets = offsets
        plan.lengths = lengths
        plan.run_literal = plan.full_count * size + np.cumsum(lengths) - lengths
        plan.delta_literal_bytes = int(lengths.sum())
        return plan

    def apply_all(self, target: np.ndarray, size: int, rows: np.ndarray, literal: bytes) -> None:
        """Write every delta's runs over its row of ``target`` (bytes; rows hold the base)."""
        total_runs = int(self.run_counts.sum())
        if not total_runs:
            return
        targets = np.repeat(rows, self.run_counts) * size + self.offsets
        sources = self.run_literal
        lengths = self.lengths
        source = np.frombuffer(literal, np.uint8)
        # In slices of about a MiB of bytes, so the index arrays stay small.
        ends = np.cumsum(lengths)
        cuts = np.searchsorted(ends, np.arange(SCATTER_BYTES, int(ends[-1]), SCATTER_BYTES))
        for start, stop in zip(
            np.concatenate(([0], cuts)), np.concatenate((cuts, [total_runs])), strict=True
        ):
            part = lengths[start:stop]
            if not part.size:
                continue
            ramp = np.arange(int(part.sum())) - np.repeat(np.cumsum(part) - part, part)
            target[np.repeat(targets[start:stop], part) + ramp] = source[
                np.repeat(sources[start:stop], part) + ramp
            ]
