"""Compression of QEMU's migration stream in the bridge: bounded zstd frames, adaptive level.

Each chunk read from QEMU becomes one frame: ``D`` + the chunk as it is, or ``Z`` + one
self-contained zstd frame (content size and checksum in it). Independent frames were
measured on a real guest's stream to compress as well as a streaming compressor that keeps
its window across chunks (22.4 vs 22.6 MiB of 68.5 MiB at level 1, 256 KiB chunks) and
faster, because QEMU's pages rarely repeat at a distance; they also make the level free to
change at any chunk, let two threads compress at once, and let the sink bound what one frame
can make it allocate. A chunk whose pages were found in reference files goes as ``R``
(:mod:`novacron_libvirt.pagerefs`) around an inner ``D``/``Z`` frame. :class:`LevelController`
picks the level (or raw) from the time the sender spends waiting for the link, for the
compressor and for QEMU. Levels 1 and 3 only: level 5 made 1% fewer bytes than 3 at a fifth of
level 1's speed on the same stream.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import zstandard

from novacron_libvirt.pagerefs import REF_TAG, ReferenceIndex, ReferenceStore, reference_count
from novacron_sdk.errors import FrameError
from novacron_sdk.transport.interface import Channel

CODEC_RAW = "raw"
CODEC_ZSTD = "zstd"
CODECS = (CODEC_RAW, CODEC_ZSTD)
RAW_TAG, ZSTD_TAG = b"D", b"Z"
MAX_CHUNK_BYTES = 1 << 20  # the most one frame may expand to at the sink
# The encoder's window is at most the chunk (content size known): no frame needs more.
MAX_WINDOW_BYTES = 1 << 21
RAW = 0  # the controller's level for "send the chunk as it is"
LEVELS = (RAW, 1, 3)
# Compression speed of each level relative to level 1, measured on a real guest's stream
# (independent 256 KiB frames): used until the level has been measured here.
PRIOR_SPEED = {1: 1.0, 3: 0.5}


def compress_chunk(
    compressors: dict[int, zstandard.ZstdCompressor],
    chunk: bytes,
    level: int,
    references: ReferenceIndex | None = None,
) -> tuple[bytes, float]:
    """The frame for ``chunk`` at ``level`` (RAW: as it is) and the seconds compression took.

    With ``references``, pages found in the reference files go as references (``R``
    frame). A chunk that does not shrink goes raw: incompressible pages cost no expansion.
    """
    if level == RAW:
        return RAW_TAG + chunk, 0.0
    started = time.perf_counter()
    found = references.find(chunk) if references is not None else []
    header = b""
    if found and references is not None:
        header, chunk = references.strip(chunk, found)
    compressor = compressors.get(level)
    if compressor is None:
        compressor = compressors[level] = zstandard.ZstdCompressor(
            level=level, write_checksum=True, write_content_size=True
        )
    packed = compressor.compress(chunk)
    inner = RAW_TAG + chunk if len(packed) >= len(chunk) else ZSTD_TAG + packed
    took = time.perf_counter() - started
    return (REF_TAG + header + inner if found else inner), took


class ChunkDecoder:
    """Turns the frames of one direction back into QEMU's bytes, refusing hostile frames.

    ``references``: the sink's reference files, already narrowed to the ones the source
    named (``R`` frames are refused without them).
    """

    def __init__(self, codec: str, references: ReferenceStore | None = None) -> None:
        if codec not in CODECS:
            msg = f"unknown stream codec {codec!r} (this bridge knows {', '.join(CODECS)})"
            raise FrameError(msg)
        self.codec = codec
        self.references = references
        self._decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_BYTES)

    def decode(self, frame: bytes) -> bytes:
        """The stream bytes a ``D``, ``Z`` or ``R`` frame carries; FrameError when bad."""
        tag, body = frame[:1], frame[1:]
        if tag == RAW_TAG:
            return body
        if tag == REF_TAG and self.references is not None:
            refs, inner = self.references.split(body)
            if inner[:1] == REF_TAG:
                msg = "page-reference frame nested in another"
                raise FrameError(msg)
            rest = self.decode(inner)
            return self.references.rebuild(refs, rest, MAX_CHUNK_BYTES)
        if tag != ZSTD_TAG or self.codec != CODEC_ZSTD:
            msg = f"unexpected frame {tag!r} on a {self.codec} migration channel"
            raise FrameError(msg)
        try:
            size = zstandard.frame_content_size(body)
        except zstandard.ZstdError as exc:
            msg = f"corrupt compressed migration frame (bad zstd header): {exc}"
            raise FrameError(msg) from exc
        if size < 0 or size > MAX_CHUNK_BYTES:
            msg = (
                f"compressed migration frame declares {size} bytes; the limit is "
                f"{MAX_CHUNK_BYTES} (a corrupt or hostile frame, or a newer bridge)"
            )
            raise FrameError(msg)
        try:
            data = self._decompressor.decompress(body, max_output_size=MAX_CHUNK_BYTES)
        except zstandard.ZstdError as exc:
            msg = f"corrupt compressed migration frame: {exc}"
            raise FrameError(msg) from exc
        if len(data) != size:
            msg = f"compressed migration frame gave {len(data)} bytes, it declared {size}"
            raise FrameError(msg)
        return data


@dataclass
class LevelController:
    """Chooses the next chunks' zstd level (or raw) from where the sender waited.

    The sender reports the seconds it waited for the link (``send``), for compressed chunks
    and for QEMU. At least every ``epoch_s`` and ``window_bytes`` (the transport's buffers
    make shorter views bursty) the largest share of waiting, if it is a quarter of the time
    or more, names the bottleneck (half of each epoch's figures carry into the next).
    Link-bound: one level up, if that level's speed (measured, or the prior) leaves
    ``margin`` times the current throughput. Compression-bound: one level down; below level
    1 is raw (the link outruns compression, as on loopback), tried only after
    ``warmup_bytes`` (while the transport's send buffer fills, compression looks like the
    bottleneck on any link), only if the link was once seen to take more frame bytes per
    second than level 1 compresses stream bytes (else raw cannot be faster: a busy CPU on
    a slow link), and given up for good once raw moved fewer stream bytes per second than
    level 1. QEMU-bound or nobody waiting: the level holds.
    """

    start_level: int = 1
    workers: int = 2
    margin: float = 1.5
    window_bytes: int = 4 << 20
    epoch_s: float = 0.3
    warmup_bytes: int = 16 << 20
    clock: Callable[[], float] = time.perf_counter
    index: int = field(init=False)
    speeds: dict[int, float] = field(default_factory=dict)  # raw bytes/s per worker
    throughputs: dict[int, float] = field(default_factory=dict)  # stream bytes/s per level
    history: list[tuple[int, str, float]] = field(default_factory=list)
    raw_lost: bool = False
    _total: int = 0
    link_rate: float = 0.0  # the most frame bytes/s the link was seen to take
    _raw: float = 0.0
    _out: float = 0.0
    _cpu: float = 0.0
    _elapsed: float = 0.0
    _fresh: int = 0
    _waits: dict[str, float] = field(default_factory=dict)
    _since: float = 0.0

    def __post_init__(self) -> None:
        self.index = LEVELS.index(self.start_level)
        self._since = self.clock()

    @property
    def level(self) -> int:
        """The level for the next chunk (RAW = 0: no compression)."""
        return LEVELS[self.index]

    def chunk_done(self, level: int, raw: int, out: int, cpu_s: float) -> None:
        """Account one chunk: ``raw`` stream bytes sent as ``out`` at ``level`` in ``cpu_s``."""
        self._total += raw
        self._out += out
        if level != self.level:
            return  # compressed before the last decision: says nothing about this level
        self._raw += raw
        self._fresh += raw
        self._cpu += cpu_s

    def waited(self, *, link: float = 0.0, codec: float = 0.0, qemu: float = 0.0) -> None:
        """Seconds the sender just waited for the link, for a compressed chunk, for QEMU."""
        for key, seconds in (("link", link), ("codec", codec), ("qemu", qemu)):
            self._waits[key] = self._waits.get(key, 0.0) + seconds
        now = self.clock()
        if self._fresh >= self.window_bytes and now - self._since >= self.epoch_s:
            self._elapsed += now - self._since
            self._since = now
            self._decide()

    def _speed(self, level: int) -> float:
        if level in self.speeds:
            return self.speeds[level]
        known = [s / PRIOR_SPEED[lv] for lv, s in self.speeds.items()]
        return PRIOR_SPEED[level] * max(known) if known else float("inf")

    def _decide(self) -> None:
        level = self.level
        throughput = self._raw / self._elapsed
        if level != RAW and self._cpu > 0:
            self.speeds[level] = self._raw / self._cpu
        self.throughputs[level] = throughput
        self.link_rate = max(self.link_rate, self._out / self._elapsed)
        bound = max(self._waits, key=lambda k: self._waits[k])
        if self._waits[bound] < 0.25 * self._elapsed:
            bound = "none"  # nobody waited much: everything keeps up
        if level == RAW and bound == "link" and self.throughputs.get(1, 0.0) > throughput:
            self.raw_lost = True  # the link carries more stream bytes compressed
            self.index += 1
        else:
            self._move(bound, throughput)
        self.history.append((level, bound, throughput))
        self._fresh = 0
        if self.level != level:  # a new level starts with a clean slate
            self._raw = self._out = self._cpu = self._elapsed = 0.0
            self._waits.clear()
            return
        self._raw, self._out, self._cpu = self._raw / 2, self._out / 2, self._cpu / 2
        self._elapsed /= 2
        self._waits = {k: v / 2 for k, v in self._waits.items()}

    def _move(self, bound: str, throughput: float) -> None:
        if bound == "link" and self.index + 1 < len(LEVELS):
            upper = LEVELS[self.index + 1]
            if self._speed(upper) * self.workers >= self.margin * throughput:
                self.index += 1
        elif bound == "codec" and self.index > 1:
            self.index -= 1
        elif bound == "codec" and self._raw_may_win(throughput):
            self.index = 0

    def _raw_may_win(self, throughput: float) -> bool:
        """Raw can only be faster if the link was seen to take more than level 1 makes."""
        warm = self._total >= self.warmup_bytes
        return warm and not self.raw_lost and self.link_rate > throughput


_Item = tuple[int, int, "asyncio.Future[tuple[bytes, float]]"]


async def send_encoded(
    reader: asyncio.StreamReader,
    channel: Channel,
    controller: LevelController,
    chunk_bytes: int,
    counted: Callable[[int, int, int], None],
    *,
    references: ReferenceIndex | None = None,
) -> None:
    """Send ``reader``'s bytes as frames until EOF, compressed as ``controller`` decides.

    Reading, compressing (``controller.workers`` threads; zstd releases the GIL) and sending
    overlap; order is kept by sending the chunks' results in the order they were read.
    ``counted(raw, framed, referenced_pages)`` is called for every frame sent.
    """
    loop = asyncio.get_running_loop()
    local = threading.local()
    queue: asyncio.Queue[_Item | None] = asyncio.Queue(maxsize=2 * controller.workers)

    def work(chunk: bytes, level: int) -> tuple[bytes, float]:
        if not hasattr(local, "compressors"):
            local.compressors = {}
        return compress_chunk(local.compressors, chunk, level, references)

    async def read_and_compress(pool: ThreadPoolExecutor) -> None:
        while data := await reader.read(chunk_bytes):
            level = controller.level
            future: asyncio.Future[tuple[bytes, float]]
            if level == RAW:
                future = loop.create_future()
                future.set_result((RAW_TAG + data, 0.0))
            else:
                future = loop.run_in_executor(pool, work, data, level)
            await queue.put((level, len(data), future))
        await queue.put(None)

    async def send_in_order() -> None:
        while True:
            started = time.perf_counter()
            item = await queue.get()
            got = time.perf_counter()
            if item is None:
                return
            level, raw, future = item
            frame, cpu_s = await future
            compressed = time.perf_counter()
            await channel.send(frame)
            sent = time.perf_counter()
            controller.chunk_done(level, raw, len(frame), cpu_s)
            controller.waited(link=sent - compressed, codec=compressed - got, qemu=got - started)
            counted(raw, len(frame), reference_count(frame))

    pool = ThreadPoolExecutor(max_workers=controller.workers, thread_name_prefix="nclv-zstd")
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(read_and_compress(pool))
            group.create_task(send_in_order())
    except BaseExceptionGroup as group_error:
        # One failure cancels the other task; re-raise the cause, not the group.
        raise group_error.exceptions[0] from None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
