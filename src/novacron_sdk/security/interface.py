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

    @abstractmethod
    def seal(self, frame: bytes) -> bytes:
        """Encrypt and authenticate an outgoing frame."""

    @abstractmethod
    def open(self, sealed: bytes) -> bytes:
        """Check and decrypt an incoming frame; raise SecurityError when it is not genuine."""


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
