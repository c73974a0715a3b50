"""Send side: the window of unacknowledged frames, cumulative acks and resends.

A frame stays here, by reference (never copied), from ``send()`` until the peer's
cumulative acknowledgement says the application took it. That gives both the sender's memory
bound (the window) and everything needed to resend when a stream dies or the whole
connection is resumed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

UNASSIGNED = -1
"""``Pending.stream_id`` of a frame still waiting in the striping queue."""


@dataclass(slots=True)
class Pending:
    """A frame the peer has not acknowledged yet (queued or on the wire)."""

    seq: int
    header: bytes
    payload: bytes
    stream_id: int = UNASSIGNED
    retransmit: bool = False
    resent_at: float = 0.0


class SendWindow:
    """Unacknowledged frames in sequence order, bounded in bytes and in frames."""

    def __init__(self, window_bytes: int, window_frames: int) -> None:
        self.window_bytes = window_bytes
        self.window_frames = window_frames
        self.next_seq = 0
        self.acked = 0
        """Every frame below this sequence number was taken by the peer's application."""
        self.acked_bytes = 0
        self.peer_received = 0
        """Every frame below this sequence number reached the peer (it may not be taken yet)."""
        self.outstanding_bytes = 0
        self._frames: deque[Pending] = deque()

    def has_room(self, size: int) -> bool:
        """Whether a frame of ``size`` bytes may be sent now.

        A frame larger than the whole window is let through alone, so any frame up to the
        maximum frame size can be sent.
        """
        if not self._frames:
            return True
        return (
            self.outstanding_bytes + size <= self.window_bytes
            and len(self._frames) < self.window_frames
        )

    def record(self, header: bytes, payload: bytes) -> Pending:
        """Remember a frame being sent (numbered ``next_seq``)."""
        pending = Pending(self.next_seq, header, payload)
        self.next_seq += 1
        self._frames.append(pending)
        self.outstanding_bytes += len(payload)
        return pending

    def get(self, seq: int) -> Pending | None:
        """The unacknowledged frame ``seq``, if it still is."""
        index = seq - self.acked
        frames = self._frames
        if 0 <= index < len(frames) and frames[index].seq == seq:
            return frames[index]
        return None

    def ack(self, upto: int) -> int:
        """Release every frame below ``upto``; returns how many payload bytes were released."""
        frames = self._frames
        released = 0
        while frames and frames[0].seq < upto:
            released += len(frames.popleft().payload)
        self.acked = max(self.acked, upto)
        self.outstanding_bytes -= released
        self.acked_bytes += released
        return released

    def on_stream(self, stream_id: int) -> list[Pending]:
        """Unacknowledged frames last sent on ``stream_id`` (to resend after it died)."""
        return [p for p in self._frames if p.stream_id == stream_id]

    def from_seq(self, seq: int) -> list[Pending]:
        """Unacknowledged frames from ``seq`` on (to resend after a resume)."""
        return [p for p in self._frames if p.seq >= seq]

    def __len__(self) -> int:
        return len(self._frames)
