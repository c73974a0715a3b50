"""General compression for the DWCP chain: zstd/lz4 in parallel chunks, chosen adaptively.

zstandard and lz4 release the GIL while they work, so a batch's literal bytes are cut into
chunks compressed (and decompressed) on a shared thread pool, next to the caller's own work.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import lz4.block
import zstandard

from novacron_dwcp.encoding.wire import (
    METHOD_LZ4,
    METHOD_RAW,
    METHOD_ZSTD,
    METHOD_ZSTD_LONG,
)
from novacron_sdk.errors import EncodingError

# Below this a chunk is not worth a thread hand-off.
MIN_CHUNK = 128 * 1024
# Every this many batches the selector re-measures a neighbouring method.
PROBE_EVERY = 16
# Weight of a new measurement in the moving averages.
SMOOTHING = 0.3
# Running long-window streams give a batch to independent frames only when those ship it
# this many times sooner: near a tie, measurement noise (a busy machine) used to send batches
# of the corpus's dirty rounds without the streams' history (files at 10 Mbit/s: 0.352x of
# zstd-1 in a run next to other work, 0.308x alone).
STAY_MARGIN = 1.25

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_local = threading.local()


def default_threads() -> int:
    """Worker threads used when the settings do not say: the machine's cores, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def shared_pool() -> ThreadPoolExecutor:
    """The process-wide compression pool, made on first use (never at import)."""
    global _pool  # noqa: PLW0603 - one pool per process, created lazily
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=default_threads(), thread_name_prefix="dwcp")
        return _pool


@dataclass(frozen=True)
class Method:
    """One general-compression choice."""

    name: str
    kind: int
    level: int
    relative_ratio: float  # output size relative to zstd-1 on the same data
    seconds_per_byte_prior: float
    lanes: int = 0  # streams that can run in parallel; 0: as many chunks as threads

    def parallelism(self, threads: int) -> int:
        """Threads this method can keep busy."""
        return min(threads, self.lanes) if self.lanes else threads


# Ordered from fastest/largest to slowest/smallest; the selector probes neighbours.
METHODS: tuple[Method, ...] = (
    Method("raw", METHOD_RAW, 0, 0.0, 0.0),
    Method("lz4", METHOD_LZ4, 0, 1.3, 1.0e-9),
    Method("zstd-1", METHOD_ZSTD, 1, 1.0, 2.5e-9),
    # History across batches (a 128 MiB window): 0.25x-0.9x of zstd-1 on dirty rounds of the
    # memory corpus. Two lanes, but whole pages (lane 0) dominate most batches: modelled as
    # one busy thread; the prior ratio is deliberately conservative.
    Method("zstd-1-long", METHOD_ZSTD_LONG, 1, 0.85, 4.0e-9, lanes=1),
    # The same streams at level 3: zstd-3's factor (0.96) and cost (2x zstd-1) applied to the
    # long window. Worth it only on links slow enough that its CPU time stays hidden.
    Method("zstd-3-long", METHOD_ZSTD_LONG, 3, 0.85 * 0.96, 8.0e-9, lanes=1),
    Method("zstd-3", METHOD_ZSTD, 3, 0.96, 5.0e-9),
    Method("zstd-6", METHOD_ZSTD, 6, 0.93, 15.0e-9),
    Method("zstd-12", METHOD_ZSTD, 12, 0.9, 60.0e-9),
    # The long window at high levels, for links slower than these levels compress (internet
    # links of a few tens of Mbit/s and less). Factors: their output relative to level 1's on
    # the corpus's first images (literal pieces of all three guests, 128 MiB window): level 15
    # 0.86-0.87x, level 17 0.82-0.83x, each taken at its least favourable; priors: their
    # measured speeds there (about 7 and 3.5 MB/s of literal bytes on one core). No level in
    # between: one chosen for a first round at 100 Mbit/s (level 9 was) is locked in with its
    # history and then loses to independent frames on dirty rounds (see _candidates).
    Method("zstd-15-long", METHOD_ZSTD_LONG, 15, 0.85 * 0.87, 140.0e-9, lanes=1),
    Method("zstd-17-long", METHOD_ZSTD_LONG, 17, 0.85 * 0.83, 290.0e-9, lanes=1),
)
# zstd-1's output/input on memory literals before anything is measured.
BASE_RATIO_PRIOR = 0.45
DEFAULT_METHOD = METHODS[2]
# The control section of a long-window batch is compressed on its own with zstd-1.
CONTROL_METHOD = METHODS[2]


# Level 1 with a 4096-entry hash table instead of 16384 and 6-byte instead of 7-byte minimum
# matches, for pieces over 256 KiB (smaller ones keep zstd's own parameters, which it sizes to
# the input): on the memory corpus's literal pieces (whole pages of all three guests, first
# images and dirty rounds) 4-10 % less CPU time for the same output (0-2 % smaller); the
# smaller table stays in the core's cache.
_LEVEL_1_HASH_LOG = 12
_LEVEL_1_MIN_MATCH = 6
_LARGE_PIECE = 256 * 1024
# zstd's own frame checksum (XXH64 of the frame's content) is not written: the decoder checks
# every rebuilt page against the batch checksum in the header, which covers all that the
# literal and control sections carry (and the transport integrity-checks its frames). Without
# it the chain's CPU time on the corpus (one thread, best of 5) is 1-6 % lower to encode and
# 0-6 % lower to decode. Decoders still verify one where an older encoder wrote it.
_FRAME_CHECKSUM = False


def _zstd_compressor(level: int, large: bool = False) -> zstandard.ZstdCompressor:
    # zstd contexts are not safe for concurrent use: one per thread, level and size class.
    key = (level, large and level == 1)
    compressors: dict[tuple[int, bool], zstandard.ZstdCompressor] = _local.__dict__.setdefault(
        "zc", {}
    )
    compressor = compressors.get(key)
    if compressor is None:
        if key[1]:
            params = zstandard.ZstdCompressionParameters.from_level(
                1,
                hash_log=_LEVEL_1_HASH_LOG,
                min_match=_LEVEL_1_MIN_MATCH,
                write_content_size=True,
                write_checksum=_FRAME_CHECKSUM,
            )
            compressor = zstandard.ZstdCompressor(compression_params=params)
        else:
            compressor = zstandard.ZstdCompressor(
                level=level, write_content_size=True, write_checksum=_FRAME_CHECKSUM
            )
        compressors[key] = compressor
    return compressor


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    decompressor: zstandard.ZstdDecompressor | None = getattr(_local, "zd", None)
    if decompressor is None:
        decompressor = zstandard.ZstdDecompressor()
        _local.zd = decompressor
    return decompressor


def compress(method: Method, data: bytes | memoryview) -> bytes:
    """Compress one piece with ``method`` (raw: a copy)."""
    if not data:
        return b""
    if method.kind == METHOD_LZ4:
        result: bytes = lz4.block.compress(data, store_size=False)
        return result
    if method.kind == METHOD_ZSTD:
        return _zstd_compressor(method.level, len(data) > _LARGE_PIECE).compress(data)
    return bytes(data)


def decompress(kind: int, data: bytes | memoryview, raw_size: int) -> bytes:
    """Decompress one piece to exactly ``raw_size`` bytes, or raise EncodingError."""
    if raw_size == 0 and not data:
        return b""
    try:
        if kind == METHOD_LZ4:
            result: bytes = lz4.block.decompress(data, uncompressed_size=raw_size)
        elif kind == METHOD_ZSTD:
            # The frame's own content size would otherwise decide the allocation.
            declared = zstandard.get_frame_parameters(data).content_size
            if declared != raw_size:
                msg = f"zstd frame declares {declared} bytes where the header said {raw_size}"
                raise EncodingError(msg)
            result = _zstd_decompressor().decompress(data, max_output_size=raw_size)
        else:
            result = bytes(data)
    except (zstandard.ZstdError, lz4.block.LZ4BlockError, ValueError) as exc:
        msg = f"compressed section of a DWCP payload is corrupt: {exc}"
        raise EncodingError(msg) from exc
    if len(result) != raw_size:
        msg = f"section decompressed to {len(result)} bytes, the header declared {raw_size}"
        raise EncodingError(msg)
    return result


def timed(method: Method, piece: memoryview) -> tuple[bytes, float]:
    """Compress one piece; return the output and the seconds it took."""
    started = time.perf_counter()
    out = compress(method, piece)
    return out, time.perf_counter() - started


def decompress_chunks(kind: int, chunks: Sequence[tuple[int, memoryview]]) -> bytes:
    """Decompress chunks (in parallel when there are several) and join them."""
    if len(chunks) == 1:
        return decompress(kind, chunks[0][1], chunks[0][0])
    pool = shared_pool()
    futures = [pool.submit(decompress, kind, data, raw) for raw, data in chunks[1:]]
    parts = [decompress(kind, chunks[0][1], chunks[0][0]) if chunks else b""]
    parts.extend(future.result() for future in futures)
    return b"".join(parts)


class AdaptiveSelector:
    """Chooses the method that ships a batch soonest, from measured speed and ratio.

    The time to ship ``n`` bytes with method m on ``t`` threads over a link of ``b`` bytes/s
    is taken as ``max(n * seconds_per_byte(m) / t, n * ratio(m) / b)``: compression and
    sending overlap in a pipelined migration, so the slower of the two decides. Without a
    bandwidth estimate the chain uses zstd-1 in parallel chunks, which keeps up with most links
    without making the CPU the bottleneck; on slower links the model picks zstd-1-long or, where
    the link leaves time for it, zstd-3-long (history across batches, one lane busy), and on
    internet links zstd-15-long or zstd-17-long. Running streams keep a batch unless
    independent frames ship it STAY_MARGIN times sooner.

    Ratios depend on the data far more than on the method, so methods are not compared by
    their own past ratios (measured on other batches): the selector keeps one measured
    zstd-1-equivalent ratio of the current data, and each method's ratio relative to zstd-1.
    The long-window streams are the exception: their history, not their level, decides their
    ratio, so the streams' own measured ratio is kept apart (their fixed factor is an upper
    bound). Speeds are measured per method; a neighbouring method is re-measured every
    PROBE_EVERY batches (next to the streams, on a copy, when they are the choice). Unmeasured
    methods' speeds are their priors scaled by zstd-1's measured speed. All estimates are
    moving averages.
    """

    def __init__(self) -> None:
        self.base_ratio = BASE_RATIO_PRIOR
        self.seconds_per_byte = {m.name: m.seconds_per_byte_prior for m in METHODS}
        self.bandwidth: float | None = None
        # The level of the running long-window streams (another level means new streams,
        # without history), or None before they start.
        self.long_level: int | None = None
        # A method to measure on the side of this batch (see ``choose``), or None.
        self.shadow: Method | None = None
        self._batches = 0
        self._stream_batches = 0  # batches sent with the running streams
        self._measured: set[str] = set()
        # The streams' own output/input: their history makes it a different quantity from the
        # others' (0.25x-0.9x of independent frames on the corpus's dirty rounds), so it is
        # kept apart, and base_ratio is measured without history (other methods, probes).
        self.long_ratio: float | None = None

    def ratio(self, method: Method) -> float:
        """Estimated output/input of ``method`` on the current data."""
        if method.kind == METHOD_RAW:
            return 1.0
        estimate = self.base_ratio * method.relative_ratio
        # Streams at another level than the running ones would start with an empty history.
        running = method.kind == METHOD_ZSTD_LONG and method.level == self.long_level
        if running and self.long_ratio is not None:
            # What the streams measured, but never worse than the prior factor: a batch sent
            # outside them is also missing from the history of every later batch.
            estimate = min(estimate, self.long_ratio)
        return min(1.0, estimate)

    def choose(self, threads: int) -> Method:
        """The method for the next batch."""
        self._batches += 1
        if self.bandwidth is None:
            return DEFAULT_METHOD
        bytes_per_second = self.bandwidth / 8

        def ship_time(method: Method) -> float:
            return max(
                self.seconds(method) / method.parallelism(threads),
                self.ratio(method) / bytes_per_second,
            )

        best = min(self._candidates(), key=lambda m: (ship_time(m), self.ratio(m)))
        running = self._running()
        if (
            running is not None
            and best.kind != METHOD_ZSTD_LONG
            and ship_time(running) <= STAY_MARGIN * ship_time(best)
        ):
            # A batch sent outside the streams is missing from the history of every later
            # batch, which the per-batch model does not see: near a tie, the streams stay.
            best = running
        self.shadow = None
        if best.kind == METHOD_ZSTD_LONG and best.level == self.long_level:
            self._stream_batches += 1
        if self._batches % PROBE_EVERY == 0:
            position = METHODS.index(best)
            step = 1 if (self._batches // PROBE_EVERY) % 2 else -1
            probe = METHODS[min(len(METHODS) - 1, max(0, position + step))]
            if probe is best:
                return best  # an end of the list: no neighbour on that side
            if probe.kind == METHOD_ZSTD_LONG and probe.level != self.long_level:
                # A probe must not start (or restart) the streams: that costs their history.
                return best
            if best.kind != METHOD_ZSTD_LONG or probe.kind == METHOD_RAW:
                return probe
            # Leaving the long-window streams for a batch would send it without their
            # history: the probe compresses a copy of the literals on the side instead.
            self.shadow = probe
        return best

    def seconds(self, method: Method) -> float:
        """Estimated compression seconds per input byte of ``method`` on one thread.

        A method not measured yet is assumed as much slower than zstd-1 as the priors say,
        scaled by zstd-1's measured speed on this machine when that is known.
        """
        name = method.name
        if name in self._measured or DEFAULT_METHOD.name not in self._measured:
            return self.seconds_per_byte[name]
        scale = self.seconds_per_byte[DEFAULT_METHOD.name] / DEFAULT_METHOD.seconds_per_byte_prior
        return method.seconds_per_byte_prior * scale

    def _running(self) -> Method | None:
        """The running streams' method, or None when no streams run."""
        if self.long_level is None:
            return None
        return next(
            (m for m in METHODS if m.kind == METHOD_ZSTD_LONG and m.level == self.long_level),
            None,
        )

    def streams_started(self, level: int) -> None:
        """The encoder (re)started its long-window streams at ``level``: no history yet."""
        self.long_level = level
        self.long_ratio = None
        self._stream_batches = 0

    def _candidates(self) -> tuple[Method, ...]:
        """Every method; streams at another level only while the running ones are young.

        The first PROBE_EVERY batches of the streams are their trial (their level was chosen
        on estimates); after that their history is worth more than a level change, and a
        batch the streams cannot take in time goes in independent frames instead.
        """
        if self.long_level is None or self._stream_batches < PROBE_EVERY:
            return METHODS
        return tuple(m for m in METHODS if m.kind != METHOD_ZSTD_LONG or m.level == self.long_level)

    def observe(self, method: Method, raw: int, compressed: int, seconds: float | None) -> None:
        """Fold one measurement into the estimates (tiny inputs say nothing and are skipped).

        ``seconds`` is None when the time says nothing about the method's speed: the first
        batch of new long-window streams also pays for setting up their window and tables.
        """
        if method.kind == METHOD_RAW or raw < MIN_CHUNK // 4:
            return
        name = method.name
        if method.kind == METHOD_ZSTD_LONG:
            measured = compressed / raw
            last = measured if self.long_ratio is None else self.long_ratio
            self.long_ratio = last + SMOOTHING * (measured - last)
        else:
            equivalent = compressed / raw / method.relative_ratio
            self.base_ratio += SMOOTHING * (equivalent - self.base_ratio)
        if seconds is None:
            return
        self.seconds_per_byte[name] += SMOOTHING * (seconds / raw - self.seconds_per_byte[name])
        self._measured.add(name)
