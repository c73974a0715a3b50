"""Sealed channels: wrap any transport's channel so every frame is sealed and opened.

:class:`SecureChannel` works on top of the :class:`~novacron_sdk.transport.interface.Channel`
contract only, so the builtin TCP transport and the DWCP multi-stream transport get sealed
frames without changes. :func:`secure_channel` runs the handshake of a registered security
provider (``novacron_register_security_providers``), so another plugin can replace the
handshake, the sealing and the opening as a whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from novacron_sdk.errors import NovaCronError, SecurityError, TransportError
from novacron_sdk.security.interface import SecureSession, SecurityProvider
from novacron_sdk.transport.interface import Channel, ChannelStats

if TYPE_CHECKING:
    from novacron_sdk.plugin.manager import NovaCronPluginManager

Role = Literal["initiator", "responder"]
# Frames are opened into one reused buffer; one grown past this for an unusually large
# frame is given back afterwards.
_KEEP_SCRATCH_BYTES = 8 * 1024 * 1024


class SecureChannel(Channel):
    """A channel whose frames are sealed by ``session`` on send and opened on receive.

    A frame that fails to open (tampered, replayed, reordered, wrong key) raises
    SecurityError, and the channel stays failed: every later ``recv`` raises the same error,
    because the frames after a rejected one cannot be trusted to line up.
    """

    def __init__(self, channel: Channel, session: SecureSession) -> None:
        if session.peer_accepts_unchecked_frames:
            # Every frame is sealed from here on, so a transport may drop its own checksum
            # (the builtin tcp transport skips its CRC32); the AEAD tag catches any change.
            send_unchecked = getattr(channel, "ex_send_unchecked", None)
            if callable(send_unchecked):
                send_unchecked()
        self.inner = channel
        self.session = session
        self._send_lock = asyncio.Lock()
        self._failed: SecurityError | None = None
        self._frames_sent = 0
        self._frames_received = 0
        self._payload_sent = 0
        self._payload_received = 0
        self._scratch = bytearray()

    @property
    def peer_id(self) -> str:
        """The authenticated peer's identity."""
        return self.session.peer_id

    async def send(self, frame: bytes) -> None:
        """Seal ``frame`` and send it; sealing and sending keep the order of the calls."""
        async with self._send_lock:
            # Under the lock, sequence numbers reach the inner channel in the order sealed,
            # whatever the inner transport does between its own awaits.
            await self.inner.send(self.session.seal(frame))
        self._frames_sent += 1
        self._payload_sent += len(frame)

    async def recv(self) -> bytes:
        """The next frame, opened; SecurityError when it is not genuine."""
        if self._failed is not None:
            raise self._failed
        sealed = await self.inner.recv()
        try:
            view = self.session.open_into(sealed, self._scratch)
        except SecurityError as exc:
            self._failed = exc
            raise
        # The sealed frame is freed before the result is allocated, so the allocator hands
        # back the same block: one frame-sized block per frame, as without sealing. Two
        # fresh blocks per frame would make glibc return them to the kernel every time.
        del sealed
        with view:
            whole = view.obj
            # A session that opened into a bytes object of its own needs no copy.
            frame = whole if type(whole) is bytes and len(whole) == len(view) else bytes(view)
        if len(self._scratch) > _KEEP_SCRATCH_BYTES:
            self._scratch = bytearray()
        self._frames_received += 1
        self._payload_received += len(frame)
        return frame

    async def drain(self) -> None:
        """Wait until the inner channel has handed every sealed frame to the network."""
        await self.inner.drain()

    async def close(self) -> None:
        """Close the inner channel. Safe to call twice."""
        await self.inner.close()

    def stats(self) -> ChannelStats:
        """The inner channel's counters, with payload counted before sealing."""
        return self.inner.stats().model_copy(
            update={
                "frames_sent": self._frames_sent,
                "frames_received": self._frames_received,
                "payload_bytes_sent": self._payload_sent,
                "payload_bytes_received": self._payload_received,
            }
        )


def make_provider(
    plugins: NovaCronPluginManager,
    name: str | None = None,
    settings: Mapping[str, Any] | None = None,
) -> SecurityProvider:
    """Provider ``name`` (default: the highest-priority one) built with ``settings``."""
    registry = plugins.security
    cls = registry.get(name or registry.default_name())
    return cls(settings)


async def secure_channel(
    plugins: NovaCronPluginManager,
    channel: Channel,
    role: Role,
    provider: SecurityProvider | str | None = None,
    *,
    settings: Mapping[str, Any] | None = None,
) -> SecureChannel:
    """Run the handshake over ``channel`` and return it sealed.

    ``provider`` is a provider object, or the registry name of one (built with ``settings``),
    or None for the default registered provider. The channel is closed when the handshake
    fails, and the SecurityError (or TransportError) is raised.
    """
    if not isinstance(provider, SecurityProvider):
        provider = make_provider(plugins, provider, settings)
    try:
        session = await provider.handshake(channel, role=role)
    except BaseException as exc:
        await channel.close()
        if isinstance(exc, NovaCronError) and not isinstance(exc, SecurityError | TransportError):
            msg = f"security handshake failed: {exc}"
            raise SecurityError(msg) from exc
        raise
    return SecureChannel(channel, session)
