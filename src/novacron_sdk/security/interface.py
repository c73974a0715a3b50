"""The security contract: a handshake over a channel yields a session that seals frames.

A provider authenticates both peers (their identities must be enrolled) and derives
per-direction keys. :class:`SecureSession` seals outgoing frames and opens incoming ones,
rejecting tampered, replayed and out-of-order frames with
:class:`~novacron_sdk.errors.SecurityError`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from novacron_sdk.transport.interface import Channel


class SecureSession(ABC):
    """Keys for one channel after a successful handshake."""

    peer_id: str
    peer_accepts_unchecked_frames: bool = False
    """The peer said in the handshake that its transport takes sealed frames without the
    transport's own checksum (the AEAD tag covers them); see ``SecureChannel``."""

    @abstractmethod
    def seal(self, frame: bytes) -> bytes:
        """Encrypt and authenticate an outgoing frame."""

    @abstractmethod
    def open(self, sealed: bytes) -> bytes:
        """Check and decrypt an incoming frame; raise SecurityError when it is not genuine."""

    def open_into(self, sealed: bytes, scratch: bytearray) -> memoryview:
        """Like :meth:`open`, returning a view of the frame, which may be in ``scratch``.

        :class:`~novacron_sdk.security.channel.SecureChannel` passes the same ``scratch`` for
        every frame and releases the view before the next call, so a session can decrypt into
        it (grown as needed) instead of allocating. This default just calls :meth:`open`.
        """
        del scratch  # only sessions that decrypt in place need it
        return memoryview(self.open(sealed))


class SecurityProvider(ABC):
    """Makes secure sessions over channels."""

    name: ClassVar[str] = ""

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self.settings: dict[str, Any] = dict(settings or {})

    @abstractmethod
    async def handshake(
        self, channel: Channel, *, role: Literal["initiator", "responder"]
    ) -> SecureSession:
        """Authenticate the peer over ``channel`` and agree on keys."""
