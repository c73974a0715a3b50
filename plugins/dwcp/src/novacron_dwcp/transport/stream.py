"""One TCP connection of a multi-stream channel: non-blocking frame reader and writer.

The reader parses frames out of a reusable scratch buffer; a large frame's payload is read
straight into its own buffer, which is allocated only after the header passed validation and
the owner reserved room for it in the receive window. The writer hands header and payload to
``sendmsg`` together, without joining them, and queues only what the kernel did not take.
A DATA frame flagged unchecked (sealed channels only) skips the payload CRC; its header CRC
is still checked.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import zlib
from collections import deque
from itertools import islice
from typing import Protocol

from novacron_dwcp.transport.wire import HEADER_SIZE, Header, Kind, decode_header
from novacron_sdk.errors import FrameError, TransportError

SCRATCH_SIZE = 256 * 1024
"""Frames up to half of this are parsed in place; bigger ones get their own buffer."""
_DIRECT_THRESHOLD = SCRATCH_SIZE // 2
# A large frame's buffer is reused for the next one: a fresh allocation per frame costs more
# in page faults than the copy out of it. One grown past this is given back after its frame.
_KEEP_BODY_BUFFER = 2 * 1024 * 1024
# A large frame's body buffer starts at this size (or the frame's, if smaller) and doubles as
# the bytes arrive: memory follows what the peer sent, not the length its header announced.
_FIRST_BODY_BYTES = 1024 * 1024
_READ_BUDGET = 16
_IOV_MAX = 64


class StreamOwner(Protocol):
    """What a stream reports to its channel."""

    accept_unchecked: bool
    """DATA frames without payload CRC are welcome (a security layer authenticates them)."""

    def on_data_header(self, stream: StreamConnection, header: Header) -> bool:
        """Reserve room for a DATA frame; False to skip a retransmitted duplicate."""

    def on_frame(self, stream: StreamConnection, header: Header, payload: bytes) -> None:
        """A complete, CRC-checked frame."""

    def on_stream_lost(self, stream: StreamConnection, error: BaseException | None) -> None:
        """The connection ended (EOF, reset or protocol error)."""

    def on_stream_drained(self, stream: StreamConnection) -> None:
        """Everything queued on this stream was handed to the kernel."""


class StreamConnection:
    """A non-blocking TCP socket carrying DWCP frames for one channel."""

    def __init__(
        self,
        sock: socket.socket,
        stream_id: int,
        owner: StreamOwner,
        max_frame: int,
        congestion: str,
    ) -> None:
        self.sock = sock
        self.stream_id = stream_id
        self.congestion = congestion
        self.draining = False
        """No new frames are assigned (the stream is being retired)."""
        self.closed = False
        self.broken = False
        """A write failed; the loss is reported from the event loop, not inside send_frame."""
        self.out_bytes = 0
        self.estimate: tuple[float, int, float] = (0.0, 0, -1.0)
        """(delivery rate B/s, kernel unsent bytes, when read): the scheduler's cache."""
        self.acked_mark = (0, 0.0)
        """(tcpi_bytes_acked, when it last changed): the stall detector's memory."""
        self.unsent_at_end = 0
        """Bytes still queued here (never handed to the kernel) when the stream ended."""
        self._owner = owner
        self._max_frame = max_frame
        self._loop = asyncio.get_running_loop()
        self._fd = sock.fileno()
        self._out: deque[bytes | memoryview] = deque()
        self._writing = False
        self._shutdown_when_flushed = False
        self._scratch = bytearray(SCRATCH_SIZE)
        self._view = memoryview(self._scratch)
        self._start = 0
        self._end = 0
        self._pending: Header | None = None
        self._body: memoryview | None = None
        self._body_buffer = bytearray()
        self._body_got = 0
        self._body_length = 0  # the large frame's full length (its buffer may be shorter yet)
        self._body_crc = 0
        self._body_checked = True
        self._discard = 0
        self._reserved = 0
        sock.setblocking(False)
        self._loop.add_reader(self._fd, self._on_readable)

    @property
    def reserved(self) -> int:
        """Bytes reserved in the receive window by a frame this stream is still reading."""
        return self._reserved

    # -- writing ---------------------------------------------------------------------------

    def send_frame(self, header: bytes, payload: bytes | memoryview = b"") -> None:
        """Queue a frame; it goes to the kernel at once when the socket has room."""
        if self.closed or self.broken:
            return  # its frames are resent elsewhere once the loss is reported
        self._out.append(header)
        self.out_bytes += len(header)
        if payload:
            self._out.append(payload)
            self.out_bytes += len(payload)
        if not self._writing:
            self._flush()

    def shutdown_when_flushed(self) -> None:
        """Half-close the sending side once everything queued was written."""
        self._shutdown_when_flushed = True
        if not self._out and not self.closed:
            self._shutdown_write()

    def _flush(self) -> None:
        out = self._out
        while out:
            bufs = list(islice(out, _IOV_MAX))
            try:
                sent = self.sock.sendmsg(bufs)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._break(exc)
                return
            self.out_bytes -= sent
            while sent:
                head = out[0]
                if sent >= len(head):
                    sent -= len(head)
                    out.popleft()
                else:
                    out[0] = memoryview(head)[sent:]
                    sent = 0
                    break
            else:
                continue
            break
        if out:
            if not self._writing:
                self._writing = True
                self._loop.add_writer(self._fd, self._flush)
            return
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)
        if self._shutdown_when_flushed:
            self._shutdown_write()
        self._owner.on_stream_drained(self)

    def _shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._break(exc)

    def _break(self, error: BaseException) -> None:
        # Reporting the loss right here would re-enter the channel from inside its own
        # send path (a resend hitting another dead socket), so it is deferred.
        if not self.broken:
            self.broken = True
            self._loop.call_soon(self._lost, error)

    @property
    def usable(self) -> bool:
        """New frames may be assigned to this stream."""
        return not (self.draining or self.closed or self.broken)

    # -- reading ---------------------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            for _ in range(_READ_BUDGET):
                if self.closed:
                    return
                body = self._body
                if body is not None:
                    if self._body_got == len(body):
                        body = self._grow_body()
                    got = self.sock.recv_into(body[self._body_got :])
                    if not got:
                        self._lost(None)
                        return
                    if self._body_checked:
                        # Checksummed now, while the bytes the kernel just wrote are in cache.
                        start = self._body_got
                        self._body_crc = zlib.crc32(body[start : start + got], self._body_crc)
                    self._body_got += got
                    if self._body_got == self._body_length:
                        self._finish_body()
                    continue
                if self._end == SCRATCH_SIZE:
                    self._compact()
                got = self.sock.recv_into(self._view[self._end :])
                if not got:
                    self._lost(None)
                    return
                self._end += got
                self._parse()
        except (BlockingIOError, InterruptedError):
            return
        except FrameError as exc:
            self._lost(exc)
        except OSError as exc:
            self._lost(exc)

    def _compact(self) -> None:
        live = self._end - self._start
        self._view[:live] = self._view[self._start : self._end]
        self._start, self._end = 0, live

    def _parse(self) -> None:
        view = self._view
        while True:
            avail = self._end - self._start
            if self._discard:
                take = min(self._discard, avail)
                self._start += take
                self._discard -= take
                if self._discard:
                    break
                continue
            header = self._pending
            if header is None:
                if avail < HEADER_SIZE:
                    break
                header = decode_header(
                    view[self._start : self._start + HEADER_SIZE],
                    self._max_frame,
                    accept_unchecked=self._owner.accept_unchecked,
                )
                self._start += HEADER_SIZE
                avail -= HEADER_SIZE
                if header.kind == Kind.DATA:
                    if not self._owner.on_data_header(self, header):
                        self._discard = header.length
                        continue
                    self._reserved = header.length
            length = header.length
            if avail >= length:
                self._pending = None
                payload = view[self._start : self._start + length]
                self._start += length
                header.check_payload(payload)
                self._reserved = 0
                self._owner.on_frame(self, header, bytes(payload))
                continue
            if length > _DIRECT_THRESHOLD:
                self._start_body(header, avail)
                break
            self._pending = header
            if self._start + length > SCRATCH_SIZE:
                self._compact()
            break
        if self._start == self._end:
            self._start = self._end = 0

    def _start_body(self, header: Header, avail: int) -> None:
        """Read the rest of a large frame straight into the body buffer.

        The buffer is not sized from the header alone (a peer could announce frames it never
        sends): it holds what arrived and room for as much again, and grows as bytes come.
        """
        length = header.length
        first = min(length, max(_FIRST_BODY_BYTES, 2 * avail))
        if len(self._body_buffer) < first:
            self._body_buffer = bytearray(first)
        body = memoryview(self._body_buffer)[: min(length, len(self._body_buffer))]
        body[:avail] = self._view[self._start : self._end]
        self._body, self._body_got, self._pending = body, avail, header
        self._body_length = length
        self._body_checked = not header.unchecked
        if self._body_checked:
            self._body_crc = zlib.crc32(body[:avail], header.prefix_crc)
        self._start = self._end = 0

    def _grow_body(self) -> memoryview:
        """Double the full body buffer of the frame being received, up to its length."""
        old = self._body
        assert old is not None  # only called while a body is being received
        grown = bytearray(min(self._body_length, 2 * len(old)))
        grown[: self._body_got] = old[: self._body_got]
        old.release()
        self._body_buffer = grown
        self._body = memoryview(grown)
        return self._body

    def _finish_body(self) -> None:
        body, header = self._body, self._pending
        if body is None or header is None:  # set together in _parse; defensive
            return
        self._body, self._pending, self._body_got = None, None, 0
        if self._body_checked:
            header.check_crc(self._body_crc)
        payload = bytes(body)
        body.release()
        if len(self._body_buffer) > _KEEP_BODY_BUFFER:
            self._body_buffer = bytearray()
        self._reserved = 0
        self._owner.on_frame(self, header, payload)

    # -- ending ----------------------------------------------------------------------------

    def abort(self) -> None:
        """Reset the connection (RST), as a crash or a middlebox would."""
        if not self.closed:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._lost(TransportError(f"stream {self.stream_id} aborted"))

    def close(self) -> None:
        """Close the socket without reporting a loss."""
        if self.closed:
            return
        self.closed = True
        self._teardown()

    def _lost(self, error: BaseException | None) -> None:
        if self.closed:
            return
        self.closed = True
        # The peer may end a stream it retired while frames still wait here; the owner
        # must then resend them (an EOF is not a clean end for them).
        self.unsent_at_end = self.out_bytes
        self._teardown()
        self._owner.on_stream_lost(self, error)

    def _teardown(self) -> None:
        self._loop.remove_reader(self._fd)
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
        self._out.clear()
        self.out_bytes = 0
        if self._body is not None:
            self._body.release()
            self._body = None
        self.sock.close()
