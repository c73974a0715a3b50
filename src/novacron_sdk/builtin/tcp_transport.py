"""The builtin ``tcp`` transport: one asyncio TCP connection per channel, CRC-checked frames.

Frames use the header of :mod:`novacron_sdk.transport.framing`, and its
:class:`~novacron_sdk.transport.framing.FrameProtocol` receives them: once a large frame's
header is validated the kernel writes its payload straight into a reusable buffer, with no
intermediate copy (``StreamReader.readexactly`` copies each payload three times).

Settings (all optional):

- ``max_frame_bytes`` (default 64 MiB): largest payload this side accepts or sends. A larger
  declared length is rejected from the header alone, before anything is read or allocated.
- ``send_buffer_bytes`` / ``recv_buffer_bytes`` (default 4 MiB): ``SO_SNDBUF``/``SO_RCVBUF``;
  0 keeps the operating system's default (and its auto-tuning).
- ``write_buffer_bytes`` (default 4 MiB): high-water mark of the user-space write buffer.
  ``send()`` waits while more than this is queued, so the sending side buffers at most this
  plus one frame per channel (plus the kernel's socket buffer).
- ``recv_queue_bytes`` (default 4 MiB): received frames not yet taken by ``recv()``; above
  it the socket is no longer read, which pushes back on the sender through TCP's window.
- ``skip_crc_when_sealed`` (default True): on a sealed channel whose peer said in the security
  handshake that it takes them, send frames flagged ``FLAG_UNCHECKED``, without CRC32: the
  AEAD tag of every sealed frame already detects any change, so the CRC only costs CPU (a
  third of the transport's CPU time on 1 MiB frames). The security layer switches it on with
  :meth:`TcpChannel.ex_accept_unchecked` (this side takes such frames) and
  :meth:`TcpChannel.ex_send_unchecked` (the peer takes them); channels nobody switched, and
  peers that never said so (older versions, other transports), keep the CRC both ways.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from novacron_sdk.errors import FrameError, NovaCronError, TransportError
from novacron_sdk.transport import framing
from novacron_sdk.transport.framing import FrameProtocol
from novacron_sdk.transport.interface import (
    DEFAULT_MAX_FRAME,
    Channel,
    ChannelHandler,
    ChannelStats,
    Endpoint,
    Listener,
    Transport,
)

log = logging.getLogger(__name__)

MIB = 1024 * 1024
DEFAULT_SOCKET_BUFFER = 4 * MIB
DEFAULT_WRITE_BUFFER = 4 * MIB
DEFAULT_RECV_QUEUE = 4 * MIB
CLOSE_TIMEOUT_S = 10.0
# Below this size header and payload go out in one write: one segment instead of two with
# TCP_NODELAY. Above it, the copy that joining needs costs more than a second send().
_COALESCE_BELOW = 64 * 1024
FLAG_UNCHECKED = 0x80
"""Frame flag: the CRC field is zero and unchecked; a security layer authenticates the frame."""


def _int_setting(settings: Mapping[str, Any], key: str, default: int) -> int:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        msg = f"tcp transport setting {key!r} must be a non-negative integer, got {value!r}"
        raise TransportError(msg)
    return value


class _TcpFrameProtocol(FrameProtocol):
    """FrameProtocol that also takes FLAG_UNCHECKED frames, once the channel is sealed."""

    accept_unchecked = False

    def _check_frame(
        self,
        header: bytes | memoryview,
        parsed: framing.FrameHeader,
        checked: bytes | bytearray | memoryview,
    ) -> None:
        if not parsed.flags & FLAG_UNCHECKED:
            super()._check_frame(header, parsed, checked)
            return
        if not self.accept_unchecked:
            msg = (
                f"frame {parsed.seq} came without a CRC, which only sealed channels accept: "
                "the header was corrupted, or the peer skips the CRC though this side never sealed"
            )
            raise FrameError(msg)
        if parsed.crc or len(checked) != parsed.length:
            msg = f"frame {parsed.seq} without CRC is malformed (CRC field or length wrong)"
            raise FrameError(msg)


def _unchecked_header(seq: int, size: int) -> bytes:
    if not 0 <= seq <= framing.MAX_SEQ:
        msg = f"sequence number {seq} is outside 0..2**64-1; open a new channel"
        raise FrameError(msg)
    return framing.HEADER.pack(framing.MAGIC, framing.VERSION, FLAG_UNCHECKED, seq, size, 0)


class TcpChannel(Channel):
    """A channel over one TCP connection. Use :meth:`TcpTransport.connect` or ``listen``."""

    def __init__(
        self,
        protocol: FrameProtocol,
        *,
        max_frame_bytes: int,
        skip_crc_when_sealed: bool = True,
    ) -> None:
        transport = protocol.transport
        if transport is None:
            msg = "a TcpChannel needs a connected protocol"
            raise TransportError(msg)
        self._protocol = protocol
        self._transport = transport
        self._max_frame = max_frame_bytes
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._send_seq = 0
        self._skip_crc_when_sealed = skip_crc_when_sealed
        self._send_unchecked = False
        self._recv_lock = asyncio.Lock()
        self._closed = False
        self._started = time.monotonic()
        self._stats = ChannelStats(transport=TcpTransport.name)

    @property
    def peer(self) -> str:
        """``host:port`` of the other end."""
        return self._peer

    def ex_accept_unchecked(self) -> bool:
        """Accept frames without CRC from now on; whether this channel can.

        For a security layer that authenticates every frame it receives, from its handshake
        on (whose messages a signed transcript covers): it calls this before it tells the
        peer, in the handshake, that unchecked frames are welcome.
        """
        if not isinstance(self._protocol, _TcpFrameProtocol):
            return False
        self._protocol.accept_unchecked = True
        return True

    def ex_send_unchecked(self) -> None:
        """Send frames without CRC from now on, if ``skip_crc_when_sealed`` allows it.

        For a security layer whose peer accepted unchecked frames in its handshake.
        """
        self._send_unchecked = self._skip_crc_when_sealed

    def _check_sendable(self) -> None:
        if self._closed:
            msg = f"channel to {self._peer} is closed; open a new one"
            raise TransportError(msg)
        error = self._protocol.error
        if error is not None or self._protocol.lost:
            msg = f"channel to {self._peer} is unusable: {error or 'connection lost'}"
            raise TransportError(msg)

    async def send(self, frame: bytes) -> None:
        """Send one frame, waiting while the write buffer is above its high-water mark."""
        self._check_sendable()
        size = len(frame)
        if size > self._max_frame:
            msg = (
                f"frame of {size} bytes exceeds max_frame_bytes={self._max_frame}; "
                "split it or raise the setting on both sides"
            )
            raise FrameError(msg)
        if self._send_unchecked:
            header = _unchecked_header(self._send_seq, size)
        else:
            header = framing.pack_header(self._send_seq, frame)
        self._send_seq += 1
        # Header and payload are written with no await in between, so concurrent send()
        # calls cannot interleave their bytes. A memoryview keeps asyncio from copying the
        # unsent tail of a large payload twice.
        if size < _COALESCE_BELOW:
            self._transport.write(header + frame)
        else:
            self._transport.write(header)
            self._transport.write(memoryview(frame))
        stats = self._stats
        stats.frames_sent += 1
        stats.payload_bytes_sent += size
        stats.wire_bytes_sent += size + framing.HEADER_SIZE
        await self._protocol.wait_writable()

    async def recv(self) -> bytes:
        """The next frame; TransportError when the peer closed, FrameError when bad."""
        async with self._recv_lock:
            if self._closed:
                msg = f"channel to {self._peer} is closed; open a new one"
                raise TransportError(msg)
            return await self._protocol.next_frame()

    async def drain(self) -> None:
        """Wait until the write buffer is below its high-water mark."""
        self._check_sendable()
        await self._protocol.wait_writable()

    async def close(self) -> None:
        """Close the connection after flushing what was sent; idempotent."""
        if self._closed:
            return
        self._closed = True
        # close() lets asyncio flush the write buffer before the socket is shut; a peer that
        # reads nothing for CLOSE_TIMEOUT_S gets the connection aborted instead.
        self._transport.close()
        try:
            await asyncio.wait_for(self._protocol.closed.wait(), CLOSE_TIMEOUT_S)
        except TimeoutError:
            self._transport.abort()

    def stats(self) -> ChannelStats:
        """Counters so far (a copy)."""
        received = self._protocol.payload_bytes_received
        frames = self._protocol.frames_received
        return self._stats.model_copy(
            update={
                "frames_received": frames,
                "payload_bytes_received": received,
                "wire_bytes_received": received + frames * framing.HEADER_SIZE,
                "elapsed_s": time.monotonic() - self._started,
            }
        )


class TcpListener(Listener):
    """Accepts TCP peers and hands each one, as a channel, to the handler in its own task."""

    def __init__(self, server: asyncio.Server, endpoint: Endpoint) -> None:
        self._server = server
        self._endpoint = endpoint
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def endpoint(self) -> Endpoint:
        """The bound endpoint with the real port."""
        return self._endpoint

    async def close(self) -> None:
        """Stop accepting. Channels already handed out and their handlers keep running."""
        # Not wait_closed(): from Python 3.12 on it also waits for every accepted connection.
        self._server.close()


class TcpTransport(Transport):
    """One TCP connection per channel with 20-byte CRC32-checked, sequence-numbered frames."""

    name = "tcp"
    max_frame_size = DEFAULT_MAX_FRAME

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.max_frame_bytes = _int_setting(self.settings, "max_frame_bytes", DEFAULT_MAX_FRAME)
        if self.max_frame_bytes > framing.MAX_LENGTH:
            msg = f"tcp transport max_frame_bytes must be at most {framing.MAX_LENGTH}"
            raise TransportError(msg)
        self.send_buffer = _int_setting(self.settings, "send_buffer_bytes", DEFAULT_SOCKET_BUFFER)
        self.recv_buffer = _int_setting(self.settings, "recv_buffer_bytes", DEFAULT_SOCKET_BUFFER)
        self.write_buffer = _int_setting(self.settings, "write_buffer_bytes", DEFAULT_WRITE_BUFFER)
        self.recv_queue = _int_setting(self.settings, "recv_queue_bytes", DEFAULT_RECV_QUEUE)
        skip = self.settings.get("skip_crc_when_sealed", True)
        if not isinstance(skip, bool):
            msg = (
                f"tcp transport setting 'skip_crc_when_sealed' must be true or false, got {skip!r}"
            )
            raise TransportError(msg)
        self.skip_crc_when_sealed = skip

    def _tune(self, sock: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.send_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
        if self.recv_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.recv_buffer)

    def _protocol(self, on_connected: Callable[[FrameProtocol], None] | None) -> FrameProtocol:
        return _TcpFrameProtocol(
            max_frame_bytes=self.max_frame_bytes,
            recv_queue_bytes=self.recv_queue,
            on_connected=on_connected,
        )

    def _channel(self, protocol: FrameProtocol) -> TcpChannel:
        assert protocol.transport is not None  # called after connection_made
        protocol.transport.set_write_buffer_limits(high=self.write_buffer)
        return TcpChannel(
            protocol,
            max_frame_bytes=self.max_frame_bytes,
            skip_crc_when_sealed=self.skip_crc_when_sealed,
        )

    async def listen(self, endpoint: Endpoint, handler: ChannelHandler) -> TcpListener:
        """Listen on ``endpoint``; ``handler(channel)`` runs in its own task per peer."""
        tasks: set[asyncio.Task[None]] = set()

        def accepted(protocol: FrameProtocol) -> None:
            assert protocol.transport is not None
            sock = protocol.transport.get_extra_info("socket")
            if sock is not None:
                self._tune(sock)
            task = asyncio.get_running_loop().create_task(_serve(self._channel(protocol)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        async def _serve(channel: TcpChannel) -> None:
            try:
                await handler(channel)
            except NovaCronError as exc:
                log.warning("tcp handler for %s ended with %s", channel.peer, exc)
            except Exception:
                log.exception("tcp handler for %s failed", channel.peer)

        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                lambda: self._protocol(accepted),
                endpoint.host,
                endpoint.port,
                start_serving=False,
            )
        except OSError as exc:
            msg = f"cannot listen on {endpoint.host}:{endpoint.port}: {exc}"
            raise TransportError(msg) from exc
        for sock in server.sockets:
            # Accepted sockets inherit these, including the receive window scale.
            self._tune(sock)
        port = server.sockets[0].getsockname()[1]
        listener = TcpListener(server, endpoint.model_copy(update={"port": port}))
        listener.tasks = tasks
        await server.start_serving()
        return listener

    async def connect(self, endpoint: Endpoint, *, timeout: float = 10.0) -> TcpChannel:
        """Connect to a listener, giving up after ``timeout`` seconds."""
        where = f"{endpoint.host}:{endpoint.port}"
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                sock = await self._connected_socket(endpoint)
                _, protocol = await loop.create_connection(lambda: self._protocol(None), sock=sock)
        except TimeoutError as exc:
            msg = f"connect to {where} timed out after {timeout} s; is a listener running there?"
            raise TransportError(msg) from exc
        except OSError as exc:
            msg = f"connect to {where} failed: {exc}"
            raise TransportError(msg) from exc
        return self._channel(protocol)

    async def _connected_socket(self, endpoint: Endpoint) -> socket.socket:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
        last: OSError | None = None
        for family, kind, proto, _name, address in infos:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                # Before connect, so the window scale is negotiated for this buffer size.
                self._tune(sock)
                await loop.sock_connect(sock, address)
            except BaseException as exc:
                sock.close()
                if not isinstance(exc, OSError):
                    raise
                last = exc
                continue
            return sock
        raise last or OSError(f"no address found for {endpoint.host}")
