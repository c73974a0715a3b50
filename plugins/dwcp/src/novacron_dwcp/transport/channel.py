"""The multi-stream channel: one ordered, integrity-checked frame stream over N TCP streams.

``send`` stripes frames over the live streams (to the one with the least queued bytes),
``recv`` hands them out in sequence order. The peer acknowledges frames cumulatively once its
application took them; unacknowledged frames stay referenced so that a stream that dies has
its frames resent on the others, and a whole connection lost is resumed by the client side.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import Literal

from novacron_dwcp.transport.acks import Acknowledger
from novacron_dwcp.transport.congestion import set_congestion, tcp_info
from novacron_dwcp.transport.reassembly import Reassembler
from novacron_dwcp.transport.retransmit import SendWindow
from novacron_dwcp.transport.settings import MultiStreamSettings, ResolvedSettings
from novacron_dwcp.transport.stream import StreamConnection
from novacron_dwcp.transport.striping import Striper
from novacron_dwcp.transport.wire import (
    FLAG_UNCHECKED,
    HEADER_SIZE,
    Header,
    Kind,
    encode_frame,
    encode_header,
)
from novacron_sdk.errors import FrameError, NovaCronError, TransportError
from novacron_sdk.transport.interface import Channel, ChannelStats

STALL_CHECK_S = 0.05
"""How often a channel with unacknowledged frames looks for a stalled stream."""

log = logging.getLogger(__name__)
Role = Literal["client", "server"]


class MultiStreamChannel(Channel):
    """A DWCP channel. Created by MultiStreamTransport; not constructed by users."""

    def __init__(
        self,
        *,
        role: Role,
        session_id: bytes,
        settings: MultiStreamSettings,
        resolved: ResolvedSettings,
        peer_window: int,
        peer_window_frames: int,
        peer_max_frame: int,
    ) -> None:
        self.role: Role = role
        self.session_id = session_id
        self.settings = settings
        self.resolved = resolved
        self.streams: dict[int, StreamConnection] = {}
        self.on_connection_lost: Callable[[], None] | None = None
        """Called when the last stream died without a close (the resume logic hooks in)."""
        self.on_finished: Callable[[MultiStreamChannel], None] | None = None
        # Not capped by the peer's limit: an oversized frame is the receiver's to reject.
        self._send_max = settings.max_frame_bytes
        self.peer_max_frame = peer_max_frame
        self._window = SendWindow(
            min(resolved.window_bytes, peer_window),
            min(settings.window_frames, peer_window_frames),
        )
        self._striper = Striper(self._window, self.streams.values)
        self._last_progress = time.monotonic()
        self._stall_timer: asyncio.TimerHandle | None = None
        self._rx = Reassembler(
            resolved.window_bytes, settings.window_frames, settings.max_frame_bytes
        )
        self._acks = Acknowledger(
            self._rx,
            self._pick,
            every_bytes=resolved.window_bytes // 8,
            every_frames=settings.window_frames // 8,
            delay_s=settings.ack_delay_s,
        )
        self._send_waiters: list[asyncio.Future[None]] = []
        self._recv_waiter: asyncio.Future[None] | None = None
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._error: NovaCronError | None = None
        self._peer_closed_at: int | None = None
        self._closing = False
        self._close_sent = False
        """CLOSE was queued: streams lost from then on are not resent on (close() aborts some)."""
        self._closed = False
        self._rr = 0
        self._started = time.monotonic()
        self.frames_sent = 0
        self.payload_sent = 0
        self.wire_received = 0
        self.streams_lost = 0
        self.resumes = 0
        self._resuming = False
        self.accept_unchecked = False
        """DATA frames whose CRC covers only the header are taken (see ex_accept_unchecked)."""
        self.unchecked_received = 0
        """DATA frames received without payload CRC."""
        self._data_flags = 0

    # -- streams -----------------------------------------------------------------------------

    def attach(self, sock: socket.socket, stream_id: int, congestion: str) -> StreamConnection:
        """Add a connected, handshaken socket as a stream of this channel.

        TransportError when ``stream_id`` is taken (the caller still owns ``sock`` then).
        """
        if stream_id in self.streams:
            msg = f"stream id {stream_id} is already attached to this channel; not added"
            raise TransportError(msg)
        stream = StreamConnection(sock, stream_id, self, self.settings.max_frame_bytes, congestion)
        self._rx.forget_stream(stream_id)  # a new connection: its originals start afresh
        self.streams[stream_id] = stream
        self._striper.dispatch()
        self._wake_senders()
        return stream

    def drop_streams(self) -> None:
        """Close every stream silently (a resume replaces them; resends follow its handshake)."""
        for stream in list(self.streams.values()):
            self._rx.cancel(stream.reserved)
            self._rx.forget_stream(stream.stream_id)
            stream.close()
        self.streams.clear()

    def live_streams(self) -> list[StreamConnection]:
        """Streams new frames may be assigned to."""
        return [s for s in self.streams.values() if s.usable]

    def retire(self, stream: StreamConnection) -> None:
        """Stop using ``stream`` and close it once both sides flushed it (no frame is lost)."""
        if stream.draining or stream.closed:
            return
        stream.draining = True
        stream.send_frame(encode_frame(Kind.STREAM_CLOSE, 0))
        stream.shutdown_when_flushed()

    def set_congestion(self, congestion: str) -> None:
        """Switch every stream (and later ones) to another congestion control."""
        self.resolved = self.resolved.model_copy(update={"congestion": congestion})
        for stream in self.streams.values():
            stream.congestion = set_congestion(stream.sock, congestion)

    def _pick(self) -> StreamConnection | None:
        best: StreamConnection | None = None
        streams = list(self.streams.values())
        count = len(streams)
        self._rr = (self._rr + 1) % max(1, count)
        for i in range(count):
            stream = streams[(self._rr + i) % count]
            if not stream.usable:
                continue
            if best is None or stream.out_bytes < best.out_bytes:
                best = stream
                if not stream.out_bytes:
                    break
        return best

    # -- Channel API -------------------------------------------------------------------------

    async def send(self, frame: bytes) -> None:
        """Queue ``frame`` for the streams; waits while the peer's window is full.

        The frame is kept by reference until the peer acknowledges it; pass ``bytes`` (an
        immutable object) so that a resend carries exactly what was sent first.
        """
        size = len(frame)
        if size > self._send_max:
            msg = (
                f"frame of {size} bytes exceeds the channel's max frame size of "
                f"{self._send_max} bytes (max_frame_bytes); split it or raise the setting"
            )
            raise FrameError(msg)
        while True:
            self._check_sendable()
            queued = self._striper.queued_bytes
            # The window bounds what the peer must hold; this bounds what waits here for a
            # stream, so a slow path does not build a long queue (and a long drain).
            if self._window.has_room(size) and (
                not queued or queued + size <= self.settings.send_queue_bytes
            ):
                break
            waiter = asyncio.get_running_loop().create_future()
            self._send_waiters.append(waiter)
            await waiter
        header = encode_header(Kind.DATA, self._data_flags, self._window.next_seq, frame)
        pending = self._window.record(header, frame)
        self.frames_sent += 1
        self.payload_sent += size
        if self._stall_timer is None:
            self._last_progress = time.monotonic()
            self._stall_timer = asyncio.get_running_loop().call_later(
                STALL_CHECK_S, self._check_stall
            )
        self._striper.submit(pending)

    async def recv(self) -> bytes:
        """The next frame in order; TransportError once the peer closed and all was read."""
        rx = self._rx
        while not rx.has_ready():
            if self._error is not None:
                raise self._error
            if self._peer_closed_at is not None and rx.next_expected >= self._peer_closed_at:
                msg = "peer closed the channel: every frame it sent was received"
                raise TransportError(msg)
            if self._peer_closed_at is not None and not self.streams:
                raise self._undelivered(self._peer_closed_at)
            if self._closed or self._closing:
                msg = "channel is closed"
                raise TransportError(msg)
            self._recv_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._recv_waiter
            finally:
                self._recv_waiter = None
        frame = rx.take()
        self._acks.on_taken()
        return frame

    async def drain(self) -> None:
        """Wait until every frame sent so far was handed to the kernel (or reached the peer)."""
        while (self._error is None and not self._closed) and (
            len(self._striper)
            or (
                any(s.out_bytes for s in self.streams.values())
                and self._window.peer_received < self._window.next_seq
            )
        ):
            waiter = asyncio.get_running_loop().create_future()
            self._drain_waiters.append(waiter)
            await waiter
        if self._error is not None:
            raise self._error

    async def close(self) -> None:
        """Flush, tell the peer how many frames were sent, and close every stream.

        Waits up to ``close_linger_s`` (0: not at all) for the peer to receive every frame,
        then as long again for the streams to end. When the peer was still connected but had
        not received every frame when the linger ran out, it logs a warning (the peer's
        ``recv()`` fails with a TransportError saying so); close() itself does not raise, so
        that it never replaces the error a caller closes the channel for. Every stream is
        closed even when this is cancelled.
        """
        if self._closed or self._closing:
            return
        self._closing = True
        try:
            timed_out = await self._close_streams()
        finally:
            self._finish(TransportError("channel is closed"))
        missing = self._window.next_seq - self._window.peer_received
        if timed_out and missing > 0:
            log.warning(
                "dwcp channel closed with %d of %d frames not delivered: close_linger_s (%s s) "
                "ran out before the peer had received them, so they are lost (the peer's recv() "
                "fails). Raise close_linger_s, or let the peer read everything before closing",
                missing, self._window.next_seq, self.settings.close_linger_s,
            )  # fmt: skip

    async def _close_streams(self) -> bool:
        """Linger, send CLOSE, wait for the streams to end; True when the linger ran out.

        The linger runs out when the peer, still connected, had not received every frame
        within ``close_linger_s`` (at once when that is 0).
        """
        linger = self.settings.close_linger_s
        timed_out = False
        if self._error is None:
            try:
                # Until the peer holds every frame: a stream may still die and need resends
                # (on_stream_lost resends them meanwhile). Once no stream is left, nothing
                # more can arrive: the channel ends (it is not resumed while closing).
                async with asyncio.timeout(linger):
                    while (
                        self._error is None
                        and not self._closed
                        and self.streams
                        and (
                            len(self._striper) or self._window.peer_received < self._window.next_seq
                        )
                    ):
                        waiter = asyncio.get_running_loop().create_future()
                        self._drain_waiters.append(waiter)
                        await waiter
            except TimeoutError:
                timed_out = True
                log.debug("dwcp channel closing before the peer had everything")
        closing = encode_frame(Kind.CLOSE, self._window.next_seq)
        delivered = self._window.peer_received >= self._window.next_seq
        # From here on a lost stream's frames are not resent (some are aborted on purpose).
        self._close_sent = True
        # Our last word on what arrived here, ahead of CLOSE: afterwards no stream takes it.
        self._acks.send()
        streams = list(self.streams.values())
        for stream in streams:
            if stream.closed:
                continue
            if delivered and stream.out_bytes and any(not s.out_bytes for s in streams):
                stream.abort()  # only copies of frames the peer has: do not wait for them
                continue
            stream.draining = True
            stream.send_frame(closing)
            stream.shutdown_when_flushed()
        deadline = time.monotonic() + linger
        while self.streams and time.monotonic() < deadline:
            waiter = asyncio.get_running_loop().create_future()
            self._drain_waiters.append(waiter)
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await waiter
            except TimeoutError:
                break
        return timed_out

    def stats(self) -> ChannelStats:
        """Counters so far; rtt_s is the smallest smoothed RTT the kernel reports."""
        rtts = [i.rtt_s for s in self.streams.values() if (i := tcp_info(s.sock)) and i.rtt_s > 0]
        return ChannelStats(
            transport="dwcp",
            frames_sent=self.frames_sent,
            frames_received=self._rx.consumed,
            payload_bytes_sent=self.payload_sent,
            payload_bytes_received=self._rx.consumed_bytes,
            wire_bytes_sent=self._striper.wire_bytes,
            wire_bytes_received=self.wire_received,
            streams=len(self.live_streams()),
            rtt_s=min(rtts) if rtts else None,
            elapsed_s=time.monotonic() - self._started,
        )

    # -- extras (ex_: DWCP-only) -------------------------------------------------------------

    @property
    def ex_mode(self) -> str:
        """datacenter or internet: the mode whose defaults this channel uses."""
        return self.resolved.mode

    def ex_kill_stream(self, index: int = 0) -> None:
        """Reset one stream abruptly (tests and fault drills)."""
        streams = list(self.streams.values())
        streams[index % len(streams)].abort()

    def ex_kill_all_streams(self) -> None:
        """Reset every stream at once, as a network outage would (tests and drills)."""
        for stream in list(self.streams.values()):
            stream.abort()

    def ex_accept_unchecked(self) -> bool:
        """Accept DATA frames without payload CRC from now on (their header CRC still counts).

        For a security layer that authenticates every frame it receives, from its handshake
        on (whose messages a signed transcript covers): it calls this before it tells the
        peer, in the handshake, that unchecked frames are welcome. Returns True (it can).
        """
        self.accept_unchecked = True
        return True

    def ex_send_unchecked(self) -> None:
        """Send DATA frames without payload CRC from now on, if ``skip_crc_when_sealed``.

        For a security layer whose peer accepted unchecked frames in its handshake; control
        frames (acks, closes) are not sealed and keep their full CRC.
        """
        if self.settings.skip_crc_when_sealed:
            self._data_flags = FLAG_UNCHECKED

    @property
    def resends(self) -> int:
        """Frames sent again (after a stream loss, a resume or a stall)."""
        return self._striper.resends + self._striper.rescues

    @property
    def ex_acked_bytes(self) -> int:
        """Payload bytes the peer's application took (feeds the stream-count adaptation)."""
        return self._window.acked_bytes

    @property
    def ex_received_bytes(self) -> int:
        """Payload bytes this side's application took."""
        return self._rx.consumed_bytes

    @property
    def ex_memory_bound(self) -> int:
        """Most payload bytes this channel holds at once (send window + receive bound)."""
        return self._window.window_bytes + self._send_max + self._rx.limit_bytes

    # -- stream callbacks --------------------------------------------------------------------

    def on_data_header(self, stream: StreamConnection, header: Header) -> bool:
        """Reserve receive room for a DATA frame (FrameError when the peer misbehaves)."""
        return self._rx.admit(header.seq, header.length, header.retransmit, stream.stream_id)

    def on_frame(self, stream: StreamConnection, header: Header, payload: bytes) -> None:
        """Dispatch one complete frame."""
        self.wire_received += HEADER_SIZE + len(payload)
        kind = header.kind
        if kind == Kind.DATA:
            if header.unchecked:
                self.unchecked_received += 1
            if self._rx.add(header.seq, payload):
                self._wake_receiver()
                self._acks.schedule()
        elif kind == Kind.ACK:
            received = int.from_bytes(payload[:8], "big") if len(payload) >= 8 else 0
            if received > self._window.peer_received:
                self._window.peer_received = received
                self._last_progress = time.monotonic()
                if received >= self._window.next_seq:
                    self._wake_drainers()
            if self._window.ack(header.seq):
                self._wake_senders()
        elif kind == Kind.STREAM_CLOSE:
            stream.draining = True
            stream.shutdown_when_flushed()
        elif kind == Kind.CLOSE:
            self._peer_closed_at = header.seq
            for other in list(self.streams.values()):
                other.draining = True
                other.shutdown_when_flushed()
            self._wake_receiver()
            self._wake_senders()
        else:
            msg = f"unexpected frame kind {kind} on an established stream"
            raise FrameError(msg)

    def on_stream_drained(self, stream: StreamConnection) -> None:
        """Give the stream the next queued frame; wake drain() callers when all is sent."""
        self._striper.dispatch()
        if self._send_waiters and self._striper.queued_bytes < self.settings.send_queue_bytes:
            self._wake_senders()
        if len(self._striper):
            return
        if self._window.peer_received >= self._window.next_seq or not any(
            s.out_bytes for s in self.streams.values()
        ):
            self._wake_drainers()

    def on_stream_lost(self, stream: StreamConnection, error: BaseException | None) -> None:
        """Forget the stream; resend its unacknowledged frames elsewhere unless it was retired.

        Also while close() lingers for the peer to receive everything (that is what it waits
        for), but not once CLOSE was queued, and a lost connection is not resumed then.
        """
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
            self._rx.forget_stream(stream.stream_id)
        self._rx.cancel(stream.reserved)
        self._wake_drainers()
        if isinstance(error, FrameError):
            self._finish(error)
            return
        if self._close_sent or self._closed or self._error is not None:
            if not self.streams:
                self._wake_receiver()
            return
        clean = error is None and (stream.draining or self._peer_closed_at is not None)
        # A retired stream the peer ended before it was flushed still held frames: resend
        # them (not after the peer's CLOSE, though: it takes no more frames then).
        orderly = clean and (not stream.unsent_at_end or self._peer_closed_at is not None)
        if not orderly:
            if clean:
                log.debug(
                    "dwcp stream %d ended with %d bytes unsent; resending its frames",
                    stream.stream_id,
                    stream.unsent_at_end,
                )
            else:
                self.streams_lost += 1
                log.info("dwcp stream %d lost (%s); resending its frames", stream.stream_id, error)
            self._striper.resend(self._window.on_stream(stream.stream_id))
            self._acks.send(force=True)
        if not self.live_streams():
            closed_at = self._peer_closed_at
            if self._closing:
                # close() ends the channel once no stream is left: no resume while closing.
                self._wake_receiver()
            elif closed_at is not None and not self.streams and self.next_expected < closed_at:
                self._finish(self._undelivered(closed_at))
                return
            elif closed_at is not None:
                self._wake_receiver()
            elif not orderly or not self.streams:
                self._connection_lost()
        self._wake_senders()

    # -- acks, resends, failure --------------------------------------------------------------

    def _check_stall(self) -> None:
        self._stall_timer = None
        if self._closed or not len(self._window):
            return
        loop = asyncio.get_running_loop()
        self._stall_timer = loop.call_later(STALL_CHECK_S, self._check_stall)
        if self._striper.rescue_stalled(self._last_progress, self.settings.stall_min_s):
            log.debug("dwcp: a stream held back delivery; its frames went out again")

    def resume_from(self, peer_next_expected: int) -> None:
        """After a resume: resend what the peer lacks and repeat our acknowledgement."""
        self.resumes += 1
        self._resuming = False
        self._striper.requeue_from(peer_next_expected)
        self._acks.send(force=True)
        self._wake_senders()

    @property
    def next_expected(self) -> int:
        """The first sequence number this side has not received (sent in resume handshakes)."""
        return self._rx.next_expected

    def _undelivered(self, closed_at: int) -> TransportError:
        """The error once the peer closed and its streams ended before all its frames came."""
        missing = closed_at - self._rx.next_expected
        msg = (
            f"peer closed the channel with {missing} of its {closed_at} frames undelivered: "
            "its streams ended before they arrived (its close_linger_s ran out or streams "
            "failed); the data is incomplete, transfer it again"
        )
        return TransportError(msg)

    def _check_sendable(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed or self._closing:
            msg = "channel is closed; open a new one to send"
            raise TransportError(msg)
        if self._peer_closed_at is not None:
            msg = "peer closed the channel; nothing more can be sent on it"
            raise TransportError(msg)

    def _connection_lost(self) -> None:
        if self._resuming:
            return
        self._resuming = True
        if self.on_connection_lost is not None and self.settings.resume_window_s > 0:
            self.on_connection_lost()
        else:
            self._finish(TransportError("connection lost: every stream of the channel died"))

    def abandon(self, error: NovaCronError) -> None:
        """End a channel no frame was sent on yet: CLOSE to the peer, then ``fail(error)``.

        For a connect that is given up half-way; the peer's ``recv()`` ends at once instead
        of waiting for a resume.
        """
        closing = encode_frame(Kind.CLOSE, self._window.next_seq)
        for stream in list(self.streams.values()):
            stream.send_frame(closing)  # a fresh socket takes it at once; best effort
        self.fail(error)

    def fail(self, error: NovaCronError) -> None:
        """Stop the channel with ``error`` (raised by later calls)."""
        self._finish(error)

    def _finish(self, error: NovaCronError) -> None:
        if self._error is None and not self._closing:
            self._error = error
        self._closed = True
        self._acks.stopped = True
        self._acks.cancel()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        for stream in list(self.streams.values()):
            stream.close()
        self.streams.clear()
        self._wake_receiver()
        self._wake_senders()
        self._wake_drainers()
        if self.on_finished is not None:
            finished, self.on_finished = self.on_finished, None
            finished(self)

    @property
    def finished(self) -> bool:
        """Closed or failed."""
        return self._closed

    def _wake_receiver(self) -> None:
        _wake([self._recv_waiter] if self._recv_waiter is not None else [])

    def _wake_senders(self) -> None:
        waiters, self._send_waiters = self._send_waiters, []
        _wake(waiters)

    def _wake_drainers(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        _wake(waiters)


def _wake(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
