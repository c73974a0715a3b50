"""Striping: which stream carries which frame, including resends and stalled-stream rescue.

Frames are bound to a stream late: they wait in one channel-wide queue and go to the stream
that would finish sending them first (earliest completion first, as in MPTCP's ECF
scheduler): its unsent bytes (its own queue plus the kernel's, bounded by TCP_NOTSENT_LOWAT)
plus the frame, divided by the delivery rate the kernel measures for it. When that stream is
still busy the frame waits for it rather than go to a slow stream, whose backlog would hold
back in-order delivery of every later frame.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable

from novacron_dwcp.transport.congestion import tcp_info
from novacron_dwcp.transport.retransmit import UNASSIGNED, Pending, SendWindow
from novacron_dwcp.transport.stream import StreamConnection
from novacron_dwcp.transport.wire import (
    FLAG_RETRANSMIT,
    FLAG_UNCHECKED,
    HEADER_SIZE,
    Kind,
    encode_header,
)

_FLAGS_OFFSET = 3

_ESTIMATE_TTL_S = 0.01
_UNKNOWN_RATE = 1e6


class Striper:
    """Assigns queued frames to streams that have room."""

    def __init__(
        self,
        window: SendWindow,
        streams: Callable[[], Iterable[StreamConnection]],
    ) -> None:
        self._window = window
        self._streams = streams
        self._queue: deque[Pending] = deque()
        self.queued_bytes = 0
        self.resends = 0
        self.rescues = 0
        self.wire_bytes = 0
        self._dispatching = False
        self._again = False

    def __len__(self) -> int:
        return len(self._queue)

    def submit(self, pending: Pending) -> None:
        """Queue a newly recorded frame and send it at once if a stream is free."""
        self._queue.append(pending)
        self.queued_bytes += len(pending.payload)
        self.dispatch()

    def dispatch(self) -> None:
        """Hand queued frames to the streams that will finish them first.

        Not re-entrant: handing a frame to a stream whose socket takes it at once reports the
        stream drained, which asks for a dispatch again. A nested call only notes that and
        this one loops, so a long backlog of small frames does not recurse once per frame
        (which ended in a RecursionError inside the writer callback and lost frames).
        """
        if self._dispatching:
            self._again = True
            return
        self._dispatching = True
        try:
            self._again = True
            while self._again:
                self._again = False
                self._dispatch_once()
        finally:
            self._dispatching = False

    def _dispatch_once(self) -> None:
        queue = self._queue
        if not queue:
            return
        streams = [s for s in self._streams() if s.usable]
        if len(streams) == 1:
            stream = streams[0]
            while queue and not stream.out_bytes and stream.usable:
                self._put(stream, queue.popleft())
            return
        while queue and streams:
            estimates = self._estimates(streams)
            size = len(queue[0].payload)
            best = min(
                streams,
                key=lambda s: (
                    (estimates[s.stream_id][1] + s.out_bytes + size) / estimates[s.stream_id][0]
                ),
            )
            if best.out_bytes:
                return  # the best stream is busy: wait for it (dispatch runs when it drains)
            self._put(best, queue.popleft())
            rate, unsent, at = best.estimate
            best.estimate = (rate, unsent + size, at)
            streams = [s for s in streams if s.usable]

    @staticmethod
    def _estimates(streams: list[StreamConnection]) -> dict[int, tuple[float, int]]:
        now = time.monotonic()
        for stream in streams:
            if now - stream.estimate[2] > _ESTIMATE_TTL_S:
                info = tcp_info(stream.sock)
                if info is not None:
                    stream.estimate = (info.delivery_rate, info.notsent_bytes, now)
        known = [s.estimate[0] for s in streams if s.estimate[0] > 0]
        # A stream without a measured rate yet (new, idle) is assumed half as fast as the
        # average: it gets data to ramp up with, but not ahead of proven streams.
        unknown = 0.5 * sum(known) / len(known) if known else _UNKNOWN_RATE
        return {
            s.stream_id: (s.estimate[0] if s.estimate[0] > 0 else unknown, s.estimate[1])
            for s in streams
        }

    def _put(self, stream: StreamConnection, pending: Pending) -> None:
        size = len(pending.payload)
        self.queued_bytes -= size
        if pending.retransmit:
            # A resend is checked as its first copy was: a frame sent before the channel was
            # sealed (a handshake message) keeps its payload CRC.
            unchecked = pending.header[_FLAGS_OFFSET] & FLAG_UNCHECKED
            pending.header = encode_header(
                Kind.DATA, FLAG_RETRANSMIT | unchecked, pending.seq, pending.payload
            )
            self.resends += 1
        pending.stream_id = stream.stream_id
        self.wire_bytes += size + HEADER_SIZE
        stream.send_frame(pending.header, pending.payload)

    def resend(self, frames: list[Pending]) -> None:
        """Queue ``frames`` (lost with their stream) ahead of new ones, flagged as resends."""
        for pending in reversed(frames):
            if pending.stream_id == UNASSIGNED:
                continue
            pending.retransmit = True
            pending.stream_id = UNASSIGNED
            self._queue.appendleft(pending)
            self.queued_bytes += len(pending.payload)
        self.dispatch()

    def requeue_from(self, seq: int) -> None:
        """After a resume: queue every unacknowledged frame from ``seq`` on, in order."""
        frames = self._window.from_seq(seq)
        for pending in frames:
            if pending.stream_id != UNASSIGNED:
                pending.retransmit = True
            pending.stream_id = UNASSIGNED
        self._queue = deque(frames)
        self.queued_bytes = sum(len(p.payload) for p in frames)
        self.dispatch()

    def rescue_stalled(self, last_progress: float, min_s: float) -> bool:
        """Rescue the frames of the stream holding back in-order delivery, if it stalls.

        That stream carries the first frame the peer has not received. It is rescued when
        the kernel sees no ACKs on it (see ``stream_stalled``), or when nothing new waits
        to be sent, so the other streams are idle, and the peer's in-order progress stopped
        for the hold-off (typically the tail of a transfer).
        """
        missing = self._window.get(self._window.peer_received)
        stream = self._by_id(missing.stream_id) if missing is not None else None
        if stream is None:
            return False
        now = time.monotonic()
        holdoff = stall_holdoff(stream, min_s)
        idle = not self._queue and now - last_progress >= holdoff and self._others_drained(stream)
        if not idle and not stream_stalled(stream, now, min_s):
            return False
        return self.rescue(stream.stream_id, now, holdoff) > 0

    def _others_drained(self, stream: StreamConnection) -> bool:
        """Whether every other stream's kernel has sent and seen acknowledged all it was given.

        Only then are the other streams idle on the wire and a copy costs nothing; while
        they still have data in flight or unsent (a bottleneck link with a deep queue), the
        peer's in-order progress waits on queueing, not on a lost segment, and copies would
        only add to the queue (over an emulated 10 Mbit/s link they had doubled the bytes on
        the wire and stretched a migration's downtime to 1-2.4 s).
        """
        for other in self._streams():
            if other is stream or not other.usable:
                continue
            info = tcp_info(other.sock)
            if info is not None and (info.unacked_segments or info.notsent_bytes):
                return False
        return True

    def _by_id(self, stream_id: int) -> StreamConnection | None:
        return next((s for s in self._streams() if s.stream_id == stream_id), None)

    def rescue(self, stalled: int, now: float, holdoff: float) -> int:
        """Send the unacknowledged frames of a stalled stream again on the other streams.

        A stream stuck in retransmission timeouts holds back in-order delivery of every
        later frame; a copy on a healthy stream unblocks it (the receiver drops whichever
        copy comes second). Each frame is rescued at most once per ``holdoff``.
        """
        others = [s for s in self._streams() if s.usable and s.stream_id != stalled]
        frames = [p for p in self._window.on_stream(stalled) if now - p.resent_at >= holdoff]
        if not others or not frames:
            return 0
        for pending in frames:
            target = min(others, key=lambda s: s.out_bytes)
            pending.resent_at = now
            pending.retransmit = True
            self.queued_bytes += len(pending.payload)  # _put takes it off again
            self._put(target, pending)
            self.rescues += 1
        return len(frames)


def stall_holdoff(stream: StreamConnection, min_s: float) -> float:
    """How long a stream may go without progress before its frames are sent elsewhere."""
    info = tcp_info(stream.sock)
    return max(min_s, 2 * (info.rtt_s if info else 0.0))


def stream_stalled(stream: StreamConnection, now: float, min_s: float) -> bool:
    """True when the kernel saw no ACK on ``stream`` for a while despite data in flight.

    That is a retransmission timeout or a black hole; a merely slow stream still gets ACKs
    and is left alone.
    """
    info = tcp_info(stream.sock)
    if info is None:
        return False
    acked, since = stream.acked_mark
    if info.bytes_acked != acked or not info.unacked_segments:
        stream.acked_mark = (info.bytes_acked, now)
        return False
    return now - since >= max(min_s, 2 * info.rtt_s) or info.backoff > 0
