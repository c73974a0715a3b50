"""Long-window zstd streams that span batches, so content sent earlier is matched later.

Memory moves: a file copied in the page cache, a buffer reallocated, a log line that repeats
a value just written to the heap. Such content is not at the same page (no delta) nor a whole
identical page (no duplicate), but the receiver has seen it. Two zstd streams with a 128 MiB
window and long-distance matching, one for whole pages and one for delta bytes, keep that
history on both ends; each batch is flushed as complete blocks, so it decodes on arrival.

The decoder feeds each lane to a streaming decompressor whose output is bounded: a lane never
decodes to more than the size the header declares, must use up exactly its bytes, and the
window kept is capped at 128 MiB.
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


class _Sink:
    """Collects one lane's decompressed bytes; EncodingError past the declared size."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.limit = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.size > self.limit:
            msg = "a stream lane decodes to more than its declared size: payload corrupt"
            raise EncodingError(msg)
        self.parts.append(bytes(data))
        return len(data)


class StreamDecoder:
    """The receiving end: one streaming decompressor per lane, fed each batch's lane bytes.

    A lane must decode to exactly its declared size, and its last output byte must come with
    its last input byte: the encoder ends each batch's lane with a block flush, and zstd yields
    a block's last byte only once the block is read whole (a raw block byte by byte). Input
    left over once the declared bytes are out (trailing bytes, which the stream would otherwise
    read as the start of the next batch) is corrupt. The output is bounded: the decompressor
    writes at most the declared size plus one byte per call before the sink refuses it.
    """

    def __init__(self, max_lane: int) -> None:
        """``max_lane``: the largest lane a payload can declare (the batch bound in bytes)."""
        self._sinks = [_Sink() for _ in range(LANES)]
        # One decompressor per lane: each keeps its lane's window (at most 128 MiB). The
        # output buffer (allocated per call, touched only as far as it is written) is one byte
        # larger than any lane: a lane that fits is written out within the call that consumes
        # its last byte (nothing stays behind in zstd's buffers), and a call that fills the
        # buffer has produced too much (the sink refuses it on the way).
        self._writers = [
            zstandard.ZstdDecompressor(max_window_size=1 << WINDOW_LOG).stream_writer(
                cast("IO[bytes]", sink), write_size=max_lane + 1, write_return_read=True
            )
            for sink in self._sinks
        ]

    def decompress(self, chunks: Sequence[tuple[int, memoryview]]) -> bytes:
        """The lanes' bytes for this batch, joined; EncodingError if a lane does not match."""
        if len(chunks) != LANES:
            msg = f"a stream payload has exactly {LANES} chunks, not {len(chunks)}"
            raise EncodingError(msg)
        parts = []
        for lane, (raw, data) in enumerate(chunks):
            if not raw or not len(data):
                if raw or len(data):
                    msg = "an empty stream lane carries data, or a lane carries none: corrupt"
                    raise EncodingError(msg)
                continue
            parts.append(self._lane(lane, raw, data))
        return b"".join(parts)

    def _lane(self, lane: int, raw: int, data: memoryview) -> bytes:
        sink, writer = self._sinks[lane], self._writers[lane]
        sink.parts, sink.size, sink.limit = [], 0, raw
        try:
            writer.write(data[:-1])
            if sink.size >= raw:
                msg = "a stream lane did not use all of its bytes: payload corrupt"
                raise EncodingError(msg)
            writer.write(data[-1:])
        except zstandard.ZstdError as exc:
            msg = f"a stream lane of a DWCP payload is corrupt: {exc}"
            raise EncodingError(msg) from exc
        if sink.size != raw:
            msg = f"a stream lane ended {raw - sink.size} bytes short of its declared size"
            raise EncodingError(msg)
        out = b"".join(sink.parts)
        sink.parts = []
        return out
