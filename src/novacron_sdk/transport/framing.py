"""Frame headers shared by the transports: packing, parsing and checking one frame.

Wire layout (network byte order, 20 bytes, then the payload)::

    magic    2s   b"NC"
    version  u8   1
    flags    u8   transport-defined bits (0 for plain frames)
    seq      u64  per direction, 0 for the first frame, +1 per frame
    length   u32  payload bytes
    crc      u32  zlib.crc32 (CRC-32/ISO-HDLC, the gzip/PNG polynomial) of the 16 header
                  bytes before it followed by the payload

:class:`FrameProtocol` is an asyncio protocol that speaks this format over any stream
transport. The receiver validates the header (magic, version, length against its own
limit) before it reads the payload, then the CRC, then the sequence number. It never sizes
memory from a header alone: a large frame's buffer grows as its bytes arrive, so a peer that
announces a big frame (before any authentication, say) makes it hold only what it sent.
Every failure raises :class:`~novacron_sdk.errors.FrameError` saying what was wrong.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from novacron_sdk.errors import FrameError, NovaCronError, TransportError

MAGIC = b"NC"
VERSION = 1
MAX_SEQ = 2**64 - 1
MAX_LENGTH = 2**32 - 1

_PREFIX = struct.Struct("!2sBBQI")
HEADER = struct.Struct("!2sBBQII")
HEADER_SIZE = HEADER.size
"""Bytes of header in front of every payload."""
# Frames up to this size are parsed out of one reusable buffer, so a stream of small frames
# costs one recv per many frames; larger ones get a buffer of their own.
_SCRATCH_BYTES = 256 * 1024
# Larger frames are read into a buffer reused from frame to frame: allocating and freeing a
# fresh one per frame costs more in page faults than the one copy out of it. A buffer grown
# past this size for an unusually large frame is given back after that frame.
_KEEP_BIG_BUFFER = 8 * 1024 * 1024
# A large frame's buffer starts at this size (or the frame's, if smaller) and doubles each
# time it fills, up to the frame's length: memory follows the bytes received, not the header.
_FIRST_BIG_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """A parsed header whose magic, version and length were checked."""

    flags: int
    seq: int
    length: int
    crc: int


def payload_crc(prefix: bytes | memoryview, payload: bytes | bytearray | memoryview) -> int:
    """CRC of the header fields ``prefix`` (16 bytes) followed by ``payload``."""
    return zlib.crc32(payload, zlib.crc32(prefix))


def pack_header(seq: int, payload: bytes | bytearray | memoryview, *, flags: int = 0) -> bytes:
    """The 20-byte header of ``payload`` sent as frame number ``seq``."""
    length = len(payload)
    if length > MAX_LENGTH:
        msg = f"frame of {length} bytes cannot be sent: the length field holds at most {MAX_LENGTH}"
        raise FrameError(msg)
    if not 0 <= seq <= MAX_SEQ:
        msg = f"sequence number {seq} is outside 0..2**64-1; open a new channel"
        raise FrameError(msg)
    prefix = _PREFIX.pack(MAGIC, VERSION, flags, seq, length)
    return prefix + payload_crc(prefix, payload).to_bytes(4, "big")


def parse_header(header: bytes | bytearray | memoryview, *, max_frame_bytes: int) -> FrameHeader:
    """Parse and check a header: magic, version and ``length <= max_frame_bytes``.

    Call this before reading the payload so an oversized length never causes an allocation.
    """
    if len(header) != HEADER_SIZE:
        msg = f"frame header must be {HEADER_SIZE} bytes, got {len(header)}"
        raise FrameError(msg)
    magic, version, flags, seq, length, crc = HEADER.unpack(header)
    if magic != MAGIC:
        msg = (
            f"bad frame magic {bytes(magic)!r}, expected {MAGIC!r}: "
            "the peer does not speak this protocol"
        )
        raise FrameError(msg)
    if version != VERSION:
        msg = f"unsupported frame version {version}, this side speaks version {VERSION}"
        raise FrameError(msg)
    if length > max_frame_bytes:
        msg = (
            f"frame of {length} bytes exceeds max_frame_bytes={max_frame_bytes}; "
            "raise the receiver's max_frame_bytes setting or send smaller frames"
        )
        raise FrameError(msg)
    return FrameHeader(flags=flags, seq=seq, length=length, crc=crc)


def check_payload(
    header: bytes | bytearray | memoryview,
    parsed: FrameHeader,
    payload: bytes | bytearray | memoryview,
) -> None:
    """Raise FrameError unless ``payload`` has the length and CRC its header declares."""
    if len(payload) != parsed.length:
        msg = f"truncated frame: got {len(payload)} of {parsed.length} payload bytes"
        raise FrameError(msg)
    actual = payload_crc(memoryview(header)[: _PREFIX.size], payload)
    if actual != parsed.crc:
        msg = (
            f"frame {parsed.seq} failed its CRC check (header says {parsed.crc:#010x}, "
            f"payload gives {actual:#010x}): the data was corrupted in transit"
        )
        raise FrameError(msg)


def check_sequence(parsed: FrameHeader, expected: int) -> None:
    """Raise FrameError unless the frame carries the expected sequence number."""
    if parsed.seq != expected:
        msg = f"replayed/out-of-order frame: got seq {parsed.seq}, expected {expected}"
        raise FrameError(msg)


class FrameProtocol(asyncio.BufferedProtocol):
    """Receives frames from a stream transport, checking each; handles write flow control.

    Small frames are parsed out of a scratch buffer; the payload of a larger frame is written
    by the kernel straight into a buffer kept for large frames, and copied once into the bytes
    handed out. That buffer is reused from frame to frame; when it is too small for a frame,
    it grows as the frame's bytes arrive (doubling), never to the header's length at once.
    Received frames wait in a queue bounded by ``recv_queue_bytes``: above it the protocol
    stops reading, which pushes back on the sender. Any bad frame stores a FrameError and
    closes the connection; frames that arrived before it are still delivered first.
    """

    def __init__(
        self,
        *,
        max_frame_bytes: int,
        recv_queue_bytes: int,
        on_connected: Callable[[FrameProtocol], None] | None = None,
    ) -> None:
        self.transport: asyncio.Transport | None = None
        self.frames_received = 0
        self.payload_bytes_received = 0
        self._max_frame = max_frame_bytes
        self._queue_limit = recv_queue_bytes
        self._on_connected = on_connected
        self._scratch = bytearray(_SCRATCH_BYTES)
        self._view = memoryview(self._scratch)
        self._start = 0
        self._end = 0
        self._big_buffer = bytearray()
        self._big: memoryview | None = None
        self._big_pos = 0
        self._big_header = b""
        self._big_parsed: FrameHeader | None = None
        self._expected_seq = 0
        self._frames: deque[bytes] = deque()
        self._queued = 0
        self._reading_paused = False
        self._error: NovaCronError | None = None
        self._error_raised = False
        self._recv_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._drain_waiters: deque[asyncio.Future[None]] = deque()
        self.lost = False
        self.closed = asyncio.Event()

    # -- asyncio callbacks ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Remember the transport and tell the owner."""
        self.transport = cast("asyncio.Transport", transport)
        if self._on_connected is not None:
            self._on_connected(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the next bytes go: the big frame's buffer, or the scratch buffer."""
        if self._big is not None:
            if self._big_pos == len(self._big):
                self._grow_big()
            return self._big[self._big_pos :]
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        """Account for ``nbytes`` new bytes and deliver every complete frame."""
        if self._error is not None:
            return
        try:
            if self._big is not None:
                self._big_pos += nbytes
                parsed = self._big_parsed
                assert parsed is not None  # set together with _big
                if self._big_pos == parsed.length:
                    big = self._big
                    self._big, self._big_parsed = None, None
                    self._deliver(self._big_header, parsed, big, bytes(big))
                    big.release()
                    if len(self._big_buffer) > _KEEP_BIG_BUFFER:
                        self._big_buffer = bytearray()
                return
            self._end += nbytes
            self._parse_scratch()
        except FrameError as exc:
            self.fail(exc)

    def _parse_scratch(self) -> None:
        view = self._view
        while self._error is None and self._end - self._start >= HEADER_SIZE:
            start = self._start
            header = view[start : start + HEADER_SIZE]
            parsed = parse_header(header, max_frame_bytes=self._max_frame)
            total = HEADER_SIZE + parsed.length
            have = self._end - start
            if have >= total:
                payload = view[start + HEADER_SIZE : start + total]
                self._deliver(header, parsed, payload, bytes(payload))
                self._start = start + total
                continue
            if total > len(self._scratch):
                got = have - HEADER_SIZE
                # Not sized from the header alone: what arrived and room for more; the
                # buffer grows (get_buffer) as the rest of the frame arrives.
                first = min(parsed.length, max(_FIRST_BIG_BYTES, 2 * got))
                if len(self._big_buffer) < first:
                    self._big_buffer = bytearray(first)
                big = memoryview(self._big_buffer)[: parsed.length]
                big[:got] = view[start + HEADER_SIZE : self._end]
                self._big, self._big_pos = big, got
                self._big_header, self._big_parsed = bytes(header), parsed
                self._start = self._end = 0
                return
            break
        if self._start:
            rest = bytes(view[self._start : self._end])
            self._scratch[: len(rest)] = rest
            self._start, self._end = 0, len(rest)

    def _grow_big(self) -> None:
        """Double the full buffer of the large frame being received (up to its length)."""
        assert self._big is not None
        assert self._big_parsed is not None  # set together with _big
        size = min(self._big_parsed.length, 2 * len(self._big))
        grown = bytearray(size)
        grown[: self._big_pos] = self._big[: self._big_pos]
        self._big.release()
        self._big_buffer = grown
        self._big = memoryview(grown)

    def _check_frame(
        self,
        header: bytes | memoryview,
        parsed: FrameHeader,
        checked: bytes | bytearray | memoryview,
    ) -> None:
        """Raise FrameError unless the payload matches its header (length and CRC).

        Subclasses may accept other frame kinds here (e.g. sealed frames without a CRC).
        """
        check_payload(header, parsed, checked)

    def _deliver(
        self,
        header: bytes | memoryview,
        parsed: FrameHeader,
        checked: bytes | bytearray | memoryview,
        payload: bytes,
    ) -> None:
        self._check_frame(header, parsed, checked)
        check_sequence(parsed, self._expected_seq)
        self._expected_seq += 1
        self.frames_received += 1
        self.payload_bytes_received += parsed.length
        self._frames.append(payload)
        self._queued += len(payload)
        if self._queued > self._queue_limit and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        """The peer finished sending: close our side too (channels are not half-open)."""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Record why the stream ended and wake everyone waiting."""
        self.lost = True
        self.closed.set()
        if self._error is None:
            if self._big is not None or self._end > self._start:
                got = self._big_pos if self._big is not None else self._end - self._start
                self._error = FrameError(
                    f"truncated frame: the connection ended {got} bytes into a frame"
                )
            elif exc is None:
                self._error = TransportError("peer closed: the other end ended the connection")
            else:
                self._error = TransportError(f"connection lost: {exc}")
        self._wake_reader()
        self._wake_writers()

    def pause_writing(self) -> None:
        """The transport's write buffer is above its high-water mark."""
        self._write_paused = True

    def resume_writing(self) -> None:
        """The write buffer drained below its low-water mark."""
        self._write_paused = False
        self._wake_writers()

    # -- used by channels ----------------------------------------------------------------
    def fail(self, error: NovaCronError) -> None:
        """Stop on ``error``: later receives raise it, and the connection is closed."""
        if self._error is None:
            self._error = error
        if self.transport is not None:
            self.transport.close()
        self._wake_reader()

    @property
    def error(self) -> NovaCronError | None:
        """Why the stream stopped, if it did."""
        return self._error

    async def next_frame(self) -> bytes:
        """The next checked payload; raises the stored error once the queue is empty."""
        while not self._frames:
            if self._error is not None:
                if self._error_raised:
                    msg = f"the channel is unusable after an earlier error: {self._error}"
                    raise TransportError(msg)
                self._error_raised = True
                raise self._error.with_traceback(None)
            self._recv_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._recv_waiter
            finally:
                self._recv_waiter = None
        payload = self._frames.popleft()
        self._queued -= len(payload)
        if self._reading_paused and self._queued <= self._queue_limit // 2 and not self.lost:
            self._reading_paused = False
            assert self.transport is not None
            self.transport.resume_reading()
        return payload

    async def wait_writable(self) -> None:
        """Return once the write buffer is below its high-water mark."""
        while self._write_paused and not self.lost:
            waiter = asyncio.get_running_loop().create_future()
            self._drain_waiters.append(waiter)
            await waiter

    def _wake_reader(self) -> None:
        if self._recv_waiter is not None and not self._recv_waiter.done():
            self._recv_waiter.set_result(None)

    def _wake_writers(self) -> None:
        while self._drain_waiters:
            waiter = self._drain_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
