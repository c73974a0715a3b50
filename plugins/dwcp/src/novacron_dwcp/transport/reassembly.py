"""Receive side: in-order reassembly of striped frames, replay checks and the memory bound.

Frames arrive on any stream in any order. Every DATA frame reserves its length against the
receive window *before* its payload is read, so a peer that ignores the window is cut off
with a FrameError instead of making this side allocate without bound. A reservation is
released when the application takes the frame with ``recv()``.
"""

from __future__ import annotations

from collections import deque

from novacron_sdk.errors import FrameError


class Reassembler:
    """Orders frames by sequence number and accounts for the bytes they hold."""

    def __init__(self, window_bytes: int, window_frames: int, max_frame: int) -> None:
        self.window_bytes = window_bytes
        self.window_frames = window_frames
        self.max_frame = max_frame
        self.next_expected = 0
        """Every frame below this sequence number was received (ready or taken)."""
        self.consumed = 0
        """Frames taken by the application; the cumulative acknowledgement."""
        self.consumed_bytes = 0
        self.reserved_bytes = 0
        self._ready: deque[bytes] = deque()
        self._out_of_order: dict[int, bytes] = {}
        self._last_original: dict[int, int] = {}
        """Per stream id: the highest sequence number received on it without RETRANSMIT.

        The sender hands out first copies (originals) in sequence order and a stream keeps
        the order it was given, so on one stream originals come in increasing order; resends
        and rescue copies carry RETRANSMIT. A frame without it that was already received is
        the late original of a frame whose copy came first (a stalled stream catching up)
        when its number is above this mark, and a replay otherwise. Exact, and one entry per
        attached stream: the channel calls ``forget_stream`` when a stream ends or is attached.
        (A FIFO of resent numbers bounded at 2 x window_frames had forgotten the oldest after
        many rescues, which turned legitimate late originals into "replayed frame" errors.)
        """
        self._resent: dict[int, None] = {}
        """Frames first received as resends, oldest first, at most ``2 * window_frames``.

        Only a fallback for originals that do not come in order on their stream (this sender
        never does that): such an original is still skipped once if its resend is remembered.
        """
        self._resent_limit = 2 * window_frames

    @property
    def limit_bytes(self) -> int:
        """Most payload bytes held at once (the documented receive-side bound)."""
        return self.window_bytes + self.max_frame

    def admit(self, seq: int, length: int, retransmit: bool, stream_id: int = 0) -> bool:
        """Check a DATA header from ``stream_id`` and reserve room; False: skip its payload."""
        if seq < self.next_expected or seq in self._out_of_order:
            if retransmit:
                return False
            if seq > self._last_original.get(stream_id, -1):
                # The original of a frame whose resend came first (a stalled stream caught up).
                self._last_original[stream_id] = seq
                self._resent.pop(seq, None)
                return False
            if seq in self._resent:
                del self._resent[seq]
                return False
            msg = (
                f"replayed frame: seq {seq} was already received (next expected "
                f"{self.next_expected}); the frame was rejected and the channel closed"
            )
            raise FrameError(msg)
        if seq >= self.consumed + self.window_frames:
            msg = (
                f"frame seq {seq} is beyond the receive window (frames up to "
                f"{self.consumed + self.window_frames - 1} allowed): the peer ignores flow "
                "control or replays frames from another session"
            )
            raise FrameError(msg)
        if self.reserved_bytes + length > self.limit_bytes:
            msg = (
                f"frame seq {seq} of {length} bytes would hold {self.reserved_bytes + length} "
                f"bytes, over the receive bound of {self.limit_bytes}: the peer ignores flow "
                "control"
            )
            raise FrameError(msg)
        self.reserved_bytes += length
        if not retransmit:
            if seq > self._last_original.get(stream_id, -1):
                self._last_original[stream_id] = seq
        else:
            resent = self._resent
            resent[seq] = None
            if len(resent) > self._resent_limit:
                del resent[next(iter(resent))]  # the oldest: its original is least likely due
        return True

    def forget_stream(self, stream_id: int) -> None:
        """A stream ended or a new connection took its id: its originals start afresh."""
        self._last_original.pop(stream_id, None)

    def cancel(self, length: int) -> None:
        """Give back the reservation of a frame whose stream died half-way through it."""
        self.reserved_bytes -= length

    def add(self, seq: int, payload: bytes) -> bool:
        """Store a complete frame; True when it made frames ready for the application."""
        if seq != self.next_expected:
            if seq < self.next_expected or seq in self._out_of_order:
                # Same frame on two streams at once (a resend raced the original).
                self.reserved_bytes -= len(payload)
                return False
            self._out_of_order[seq] = payload
            return False
        self._ready.append(payload)
        nxt = seq + 1
        pending = self._out_of_order
        while pending:
            frame = pending.pop(nxt, None)
            if frame is None:
                break
            self._ready.append(frame)
            nxt += 1
        self.next_expected = nxt
        return True

    def has_ready(self) -> bool:
        """A frame is waiting for ``take``."""
        return bool(self._ready)

    def take(self) -> bytes:
        """The next in-order frame (call only when ``has_ready``)."""
        frame = self._ready.popleft()
        size = len(frame)
        self.consumed += 1
        self.consumed_bytes += size
        self.reserved_bytes -= size
        return frame
