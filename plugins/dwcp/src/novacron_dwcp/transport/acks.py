"""Receive-side acknowledgements: when to tell the peer what arrived and what was taken.

One ACK carries both numbers: ``seq`` counts the frames the application took (the
sender's flow control: the window reopens), the 8-byte payload the frames received in
order (close and stall detection: the data is safe in the receiver). ACKs are coalesced:
one goes out once an eighth of the window was taken, otherwise ``delay_s`` after the
first change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from novacron_dwcp.transport.reassembly import Reassembler
from novacron_dwcp.transport.stream import StreamConnection
from novacron_dwcp.transport.wire import Kind, encode_frame


class Acknowledger:
    """Decides when to send an ACK and sends it on a stream the channel picks."""

    def __init__(
        self,
        rx: Reassembler,
        pick: Callable[[], StreamConnection | None],
        *,
        every_bytes: int,
        every_frames: int,
        delay_s: float,
    ) -> None:
        self._rx = rx
        self._pick = pick
        self._every_bytes = max(1, every_bytes)
        self._every_frames = max(1, every_frames)
        self._delay_s = delay_s
        self._timer: asyncio.TimerHandle | None = None
        self._taken = 0
        self._taken_bytes = 0
        self._received = 0
        self.stopped = False

    def on_taken(self) -> None:
        """The application took a frame: acknowledge now or soon."""
        rx = self._rx
        if (
            rx.consumed - self._taken >= self._every_frames
            or rx.consumed_bytes - self._taken_bytes >= self._every_bytes
        ):
            self.send()
        else:
            self.schedule()

    def schedule(self) -> None:
        """Send an ACK within ``delay_s`` unless one is already due."""
        if self._timer is None and not self.stopped:
            self._timer = asyncio.get_running_loop().call_later(self._delay_s, self.send)

    def send(self, force: bool = False) -> None:
        """Send the current ACK now (``force``: even when nothing changed)."""
        self.cancel()
        rx = self._rx
        news = rx.consumed != self._taken or rx.next_expected != self._received
        if (not news and not force) or self.stopped:
            return
        stream = self._pick()
        if stream is None:
            return
        self._taken, self._taken_bytes, self._received = (
            rx.consumed,
            rx.consumed_bytes,
            rx.next_expected,
        )
        payload = rx.next_expected.to_bytes(8, "big")
        stream.send_frame(encode_frame(Kind.ACK, rx.consumed, payload))

    def cancel(self) -> None:
        """Drop a pending timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
