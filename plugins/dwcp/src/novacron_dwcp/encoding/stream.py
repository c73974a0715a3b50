"""Long-window zstd streams that span batches, so content sent earlier is matched later.

Memory moves: a file copied in the page cache, a buffer reallocated, a log line that repeats
a value just written to the heap. Such content is not at the same page (no delta) nor a whole
identical page (no duplicate), but the receiver has seen it. Two zstd streams with a 128 MiB
window and long-distance matching, one for whole pages and one for delta bytes, keep that
history on both ends; each batch is flushed as complete blocks, so it decodes on arrival.

The decoder reads each lane through a bounded ``stream_reader``: it never produces more than
the size the header declares, and the window it keeps is capped at 128 MiB.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, cast

import zstandard

from novacron_sdk.errors import EncodingError

# 128 MiB: the whole memory a small guest sends in its first round stays reachable.
WINDOW_LOG = 27
LANES = 2  # lane 0: whole pages; lane 1: delta bytes


def _compress(lane: zstandard.ZstdCompressionObj, piece: memoryview) -> tuple[bytes, float]:
    started = time.perf_counter()
    out = lane.compress(piece)
    return out, time.perf_counter() - started


def _flush(lane: zstandard.ZstdCompressionObj) -> tuple[bytes, float]:
    started = time.perf_counter()
    out = lane.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    return out, time.perf_counter() - started


class StreamEncoder:
    """The sending end: one persistent compression stream per lane.

    With ``parallel``, each lane has its own worker thread (tasks of a lane run in order), so
    the lanes and the caller's analysis of the next pages all run at the same time.
    """

    def __init__(self, level: int, *, parallel: bool) -> None:
        params = zstandard.ZstdCompressionParameters.from_level(
            level, window_log=WINDOW_LOG, enable_ldm=True
        )
        self.level = level
        self._lanes = [
            zstandard.ZstdCompressor(compression_params=params).compressobj() for _ in range(LANES)
        ]
        self._workers = (
            [ThreadPoolExecutor(1, thread_name_prefix="dwcp-lane") for _ in range(LANES)]
            if parallel
            else None
        )
        self._pending: list[list[Future[tuple[bytes, float]] | tuple[bytes, float]]] = [
            [] for _ in range(LANES)
        ]
        self._sizes = [0] * LANES

    def _run(self, lane: int, task: Callable[[], tuple[bytes, float]]) -> None:
        if self._workers is None:
            self._pending[lane].append(task())
        else:
            self._pending[lane].append(self._workers[lane].submit(task))

    def feed(self, pieces: Sequence[memoryview]) -> None:
        """Queue piece i on lane i (pieces of a batch, in order)."""
        for lane, piece in enumerate(pieces):
            if len(piece):
                self._sizes[lane] += len(piece)
                self._run(lane, functools.partial(_compress, self._lanes[lane], piece))

    def finish(self) -> tuple[list[tuple[int, bytes]], float]:
        """Flush every lane that was fed; (raw size, bytes) per lane and compression seconds."""
        for lane in range(LANES):
            if self._sizes[lane]:
                self._run(lane, functools.partial(_flush, self._lanes[lane]))
        chunks: list[tuple[int, bytes]] = []
        seconds = 0.0
        for lane in range(LANES):
            results = [p.result() if isinstance(p, Future) else p for p in self._pending[lane]]
            chunks.append((self._sizes[lane], b"".join(out for out, _ in results)))
            seconds += sum(took for _, took in results)
            self._pending[lane] = []
            self._sizes[lane] = 0
        return chunks, seconds


class _Feed:
    """The compressed bytes of the current batch, handed to a stream reader on demand.

    Only ``read`` is ever called by the reader; it returns everything pending at once.
    """

    def __init__(self) -> None:
        self.pending = b""

    def read(self, size: int = -1) -> bytes:
        out, self.pending = self.pending, b""
        return out


class StreamDecoder:
    """The receiving end: one bounded stream reader per lane."""

    def __init__(self) -> None:
        self._feeds = [_Feed() for _ in range(LANES)]
        # One decompressor per lane: a decompressor's context is shared by its readers.
        self._readers = [
            zstandard.ZstdDecompressor(max_window_size=1 << WINDOW_LOG).stream_reader(
                cast("IO[bytes]", feed), read_size=1 << 20, read_across_frames=False
            )
            for feed in self._feeds
        ]

    def decompress(self, chunks: Sequence[tuple[int, memoryview]]) -> bytes:
        """The lanes' bytes for this batch, joined; EncodingError if a lane does not match."""
        if len(chunks) != LANES:
            msg = f"a stream payload has exactly {LANES} chunks, not {len(chunks)}"
            raise EncodingError(msg)
        parts = []
        for (raw, data), feed, reader in zip(chunks, self._feeds, self._readers, strict=True):
            if not raw:
                if len(data):
                    msg = "an empty stream lane carries data: payload corrupt"
                    raise EncodingError(msg)
                continue
            feed.pending = bytes(data)
            parts.append(self._read(reader, raw))
            if feed.pending:
                msg = "a stream lane did not use all of its bytes: payload corrupt"
                raise EncodingError(msg)
        return b"".join(parts)

    @staticmethod
    def _read(reader: zstandard.ZstdDecompressionReader, size: int) -> bytes:
        parts: list[bytes] = []
        missing = size
        try:
            while missing:
                part = reader.read(missing)
                if not part:
                    break
                parts.append(part)
                missing -= len(part)
        except zstandard.ZstdError as exc:
            msg = f"a stream lane of a DWCP payload is corrupt: {exc}"
            raise EncodingError(msg) from exc
        if missing:
            msg = f"a stream lane ended {missing} bytes short of its declared size"
            raise EncodingError(msg)
        return b"".join(parts)
