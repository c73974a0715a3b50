"""The transport contract: ``listen``/``connect`` giving channels of ordered frames.

A channel delivers whole frames (bytes) in order, each integrity-checked; a corrupted,
truncated, oversized or replayed frame raises :class:`~novacron_sdk.errors.FrameError` and is
never delivered. ``send`` applies back-pressure: it waits while the peer is behind, so memory
stays bounded at both ends.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_MAX_FRAME = 64 * 1024 * 1024


class Endpoint(BaseModel):
    """Where a transport listens or connects."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 lets the OS choose (listen).")
    options: dict[str, str] = Field(default_factory=dict)


class ChannelStats(BaseModel):
    """Counters of one channel. Goodput counts frame payload bytes only."""

    model_config = ConfigDict(extra="forbid")

    transport: str
    frames_sent: int = 0
    frames_received: int = 0
    payload_bytes_sent: int = 0
    payload_bytes_received: int = 0
    wire_bytes_sent: int = 0
    wire_bytes_received: int = 0
    streams: int = 1
    rtt_s: float | None = None
    elapsed_s: float = 0.0

    @property
    def goodput_bps(self) -> float:
        """Payload bits per second sent over the channel's life so far."""
        return 8 * self.payload_bytes_sent / self.elapsed_s if self.elapsed_s > 0 else 0.0


class Channel(ABC):
    """One logical, bidirectional, ordered stream of frames."""

    @abstractmethod
    async def send(self, frame: bytes) -> None:
        """Queue ``frame`` for delivery; waits while the peer is behind (back-pressure)."""

    @abstractmethod
    async def recv(self) -> bytes:
        """The next frame. Raises TransportError when the peer closed, FrameError when bad."""

    @abstractmethod
    async def drain(self) -> None:
        """Wait until every frame sent so far was handed to the network."""

    @abstractmethod
    async def close(self) -> None:
        """Flush and close. Safe to call twice."""

    @abstractmethod
    def stats(self) -> ChannelStats:
        """Counters so far."""


ChannelHandler = Callable[[Channel], Awaitable[None]]


class Listener(ABC):
    """A listening transport endpoint; each accepted peer is handed to the handler."""

    @property
    @abstractmethod
    def endpoint(self) -> Endpoint:
        """The bound endpoint (with the real port when 0 was asked for)."""

    @abstractmethod
    async def close(self) -> None:
        """Stop accepting; channels already handed out stay open."""


class Transport(ABC):
    """A way to move frames between hosts. Constructed with its config settings."""

    name: ClassVar[str] = ""
    max_frame_size: ClassVar[int] = DEFAULT_MAX_FRAME
    max_streams: ClassVar[int] = 1
    """Most parallel streams one channel can use. A migration's ``streams`` setting above it
    is refused by the planner (a transport that ignored it would be a silent no-op); a larger
    count from ``novacron_choose_stream_count`` is capped to it. A transport that uses more
    takes the count as the endpoint option ``streams``."""

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self.settings: dict[str, Any] = dict(settings or {})

    @abstractmethod
    async def listen(self, endpoint: Endpoint, handler: ChannelHandler) -> Listener:
        """Start accepting channels at ``endpoint``."""

    @abstractmethod
    async def connect(self, endpoint: Endpoint, *, timeout: float = 10.0) -> Channel:
        """Open a channel to a listener."""
