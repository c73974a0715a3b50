"""Decoder half of the DWCP chain: rebuilds batches, keeps the encoder's cache, detects desync."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from novacron_dwcp.encoding import compress, delta, stream
from novacron_dwcp.encoding.cache import PageCache
from novacron_dwcp.encoding.integrity import STATE_SIZE, checksum, fingerprints, next_state
from novacron_dwcp.encoding.wire import (
    METHOD_ZSTD,
    METHOD_ZSTD_LONG,
    OP_DELTA,
    OP_DUP,
    OP_FULL,
    OP_SAME,
    OP_ZERO,
    Header,
    check_page_size,
    parse_header,
)
from novacron_sdk.encoding.interface import PageBatch, PageDecoder
from novacron_sdk.errors import DesyncError, EncodingError

SCATTER_BYTES = 1 << 20


class DwcpDecoder(PageDecoder):
    """Decoder half of the chain: rebuilds batches and keeps the same cache as the encoder."""

    def __init__(self, page_size: int, settings: Mapping[str, Any]) -> None:
        check_page_size(page_size)
        self.page_size = page_size
        # The encoder declares its cache size; this bounds what the decoder agrees to hold.
        self.max_cache_pages = int(settings.get("max_cache_mib", 4096)) * (1 << 20) // page_size
        self.cache: PageCache | None = None
        self.stream_id = b""
        self.streams: stream.StreamDecoder | None = None
        self.seq = 0
        self.state = bytes(STATE_SIZE)
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
        try:
            control, literal = self._sections(payload, header)
        except EncodingError:
            # A long-window stream has consumed part of the bad payload: it cannot go on.
            self.broken = header.method == METHOD_ZSTD_LONG
            raise
        plan = _Plan.parse(control, header)
        if len(literal) != plan.full_count * self.page_size + plan.delta_literal_bytes:
            msg = "literal section size does not match the pages it should carry: payload corrupt"
            raise EncodingError(msg)
        try:
            data = self._rebuild(plan, literal, cache)
            table = np.frombuffer(data, np.uint64).reshape(header.page_count, self.page_size // 8)
            if checksum(fingerprints(table)) != header.checksum:
                msg = (
                    f"batch {header.seq}: pages rebuilt from the cache do not match the encoder's "
                    "checksum; the decoder's state diverged, restart the stream"
                )
                raise DesyncError(msg)
        except BaseException:
            self.broken = True
            raise
        if self.cache is None:
            # Adopted only now: a corrupt first payload must not bind the decoder to it.
            self.cache, self.stream_id = cache, header.stream_id
        self.state = next_state(self.state, control)
        self.seq += 1
        return PageBatch(plan.indices, data, self.page_size)

    def _check_step(self, header: Header) -> PageCache:
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
            cache, stream_id = PageCache(header.cache_capacity), header.stream_id
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
            raise DesyncError(msg)
        if header.cache_capacity != cache.capacity:
            msg = "the encoder changed its cache size mid-stream: payload corrupt"
            raise EncodingError(msg)
        return cache

    def _sections(self, payload: bytes, header: Header) -> tuple[bytes, bytes]:
        view = memoryview(payload)
        position = header.size
        control_view = view[position : position + header.control_compressed]
        position += header.control_compressed
        long_window = header.method == METHOD_ZSTD_LONG
        control_kind = METHOD_ZSTD if long_window else header.method
        control = compress.decompress(control_kind, control_view, header.control_raw)
        chunks: list[tuple[int, memoryview]] = []
        for raw, length in header.chunks:
            chunks.append((raw, view[position : position + length]))
            position += length
        if long_window:
            if self.streams is None:
                self.streams = stream.StreamDecoder()
            literal = self.streams.decompress(chunks)
        else:
            literal = compress.decompress_chunks(header.method, chunks) if chunks else b""
        return control, literal

    def _rebuild(self, plan: _Plan, literal: bytes, cache: PageCache) -> bytes:
        """Walk the operations in order, keeping the cache exactly as the encoder did.

        Deltas are applied after the walk, all at once with numpy; until then their rows in
        the output and their cache entries hold the base. A delta page that a later operation
        of the same batch reads is finished on the spot, so every read sees final content.
        """
        size = self.page_size
        out = bytearray(len(plan.ops) * size)
        literals = memoryview(literal)
        full_at = 0
        refs = iter(plan.refs)
        pages = cache.pages
        pending: dict[int, int] = {}  # page index -> number of its unfinished delta
        delta_rows: list[int] = []
        finished: set[int] = set()

        def finish(index: int) -> bytes:
            number = pending.pop(index)
            row = delta_rows[number]
            page = plan.apply_one(number, out[row * size : (row + 1) * size], literals)
            out[row * size : (row + 1) * size] = page
            pages[index] = page
            finished.add(number)
            return page

        for k, (op, index) in enumerate(zip(plan.ops, plan.indices, strict=True)):
            if op == OP_ZERO:
                pages.pop(index, None)
                pending.pop(index, None)
                continue
            if op == OP_FULL:
                page = bytes(literals[full_at : full_at + size])
                full_at += size
                out[k * size : (k + 1) * size] = page
                pending.pop(index, None)
                cache.put(index, page)
                continue
            source = next(refs) if op == OP_DUP else index
            base = pages.get(source)
            if base is None:
                msg = f"payload refers to page {source}, which this decoder does not hold"
                raise DesyncError(msg)
            if source in pending:
                base = finish(source)
            out[k * size : (k + 1) * size] = base
            if op == OP_SAME:
                pages.move_to_end(index)
                continue
            pending.pop(index, None)
            cache.put(index, base)
            if op == OP_DELTA:
                pending[index] = len(delta_rows)
                delta_rows.append(k)
        plan.apply_all(out, size, delta_rows, finished, literals)
        for index, number in pending.items():
            if index in pages:
                row = delta_rows[number]
                pages[index] = bytes(out[row * size : (row + 1) * size])
        return bytes(out)


class _Plan:
    """The parsed, bound-checked control section of one payload."""

    __slots__ = (
        "delta_literal_bytes", "full_count", "indices", "lengths", "offsets", "ops", "refs",
        "run_counts", "run_first", "run_literal",
    )  # fmt: skip

    def __init__(self) -> None:
        self.ops: bytes = b""
        self.indices: list[int] = []
        self.refs: list[int] = []
        empty = np.zeros(0, np.int64)
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
        ops = control[:count]
        if len(ops) != count or (count and max(ops) > OP_FULL):
            msg = "control section holds an unknown page operation: payload corrupt"
            raise EncodingError(msg)
        dups, deltas = ops.count(OP_DUP), ops.count(OP_DELTA)
        if len(control) < count * 9 + dups * 8 + deltas * 2:
            msg = "control section is shorter than its page operations need: payload corrupt"
            raise EncodingError(msg)
        position = count
        index_deltas = np.frombuffer(control, np.uint64, count, position)
        position += 8 * count
        refs = np.frombuffer(control, np.uint64, dups, position) if dups else np.zeros(0, np.uint64)
        position += 8 * dups
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
        plan.ops = ops
        plan.indices = np.cumsum(index_deltas, dtype=np.uint64).tolist()
        plan.refs = refs.tolist()
        plan.full_count = ops.count(OP_FULL)
        plan.run_counts = run_counts
        plan.run_first = np.cumsum(run_counts) - run_counts
        plan.offsets = offsets
        plan.lengths = lengths
        plan.run_literal = plan.full_count * size + np.cumsum(lengths) - lengths
        plan.delta_literal_bytes = int(lengths.sum())
        return plan

    def apply_one(self, number: int, base: bytes | bytearray, literals: memoryview) -> bytes:
        """Delta ``number`` applied to ``base`` (one page), run by run."""
        first = int(self.run_first[number])
        last = first + int(self.run_counts[number])
        page, _ = delta.apply(
            bytes(base), self.offsets[first:last].tolist(), self.lengths[first:last].tolist(),
            literals, int(self.run_literal[first]) if last > first else 0,
        )  # fmt: skip
        return page

    def apply_all(
        self, out: bytearray, size: int, rows: list[int], finished: set[int], literals: memoryview
    ) -> None:
        """Apply every delta not in ``finished`` to its row of ``out`` (which holds the base)."""
        if len(finished) == len(rows):
            return
        todo = np.array([n for n in range(len(rows)) if n not in finished], np.int64)
        counts = self.run_counts[todo]
        total_runs = int(counts.sum())
        if not total_runs:
            return
        runs = np.repeat(self.run_first[todo] - (np.cumsum(counts) - counts), counts)
        runs += np.arange(total_runs)
        targets = np.repeat(np.array(rows, np.int64)[todo], counts) * size + self.offsets[runs]
        sources = self.run_literal[runs]
        lengths = self.lengths[runs]
        target = np.frombuffer(out, np.uint8)
        source = np.frombuffer(literals, np.uint8)
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
