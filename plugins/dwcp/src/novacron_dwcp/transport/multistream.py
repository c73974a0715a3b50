"""The ``dwcp`` transport (AMST): one logical channel over an adaptive number of TCP streams.

The connecting side owns the stream count: it opens the first stream (HELLO NEW), detects
the mode from the handshake RTT, opens the mode's initial streams (HELLO JOIN), then adapts
the count by goodput, and reconnects (HELLO RESUME) when every stream was lost.
The listening side keeps a table of sessions so joining and resuming streams find their
channel. See docs/dwcp-transport.md for the wire format and the guarantees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from novacron_dwcp.transport.adaptation import StreamCountController
from novacron_dwcp.transport.channel import MultiStreamChannel
from novacron_dwcp.transport.congestion import set_congestion, tcp_info, tune_socket
from novacron_dwcp.transport.handshake import (
    StreamRefusedError,
    open_stream,
    read_control_frame,
    send_frame,
)
from novacron_dwcp.transport.settings import MODE_DEFAULTS, STREAM_LIMIT, MultiStreamSettings
from novacron_dwcp.transport.wire import Hello, HelloKind, Kind, encode_frame
from novacron_sdk.errors import NovaCronError, TransportError
from novacron_sdk.transport.interface import (
    DEFAULT_MAX_FRAME,
    ChannelHandler,
    Endpoint,
    Listener,
    Transport,
)

log = logging.getLogger(__name__)

__all__ = ["MultiStreamChannel", "MultiStreamListener", "MultiStreamTransport"]


def _hello(
    kind: HelloKind, session: bytes, stream_id: int, s: MultiStreamSettings, nxt: int
) -> Hello:
    return Hello(kind, session, stream_id, s.window_bytes, nxt, s.max_frame_bytes, s.window_frames)


def _measured_loss(channel: MultiStreamChannel) -> tuple[float | None, float | None]:
    infos = [i for s in channel.streams.values() if (i := tcp_info(s.sock)) is not None]
    rtts = [i.rtt_s for i in infos if i.rtt_s > 0]
    sent = sum(i.bytes_sent for i in infos)
    loss = sum(i.bytes_retrans for i in infos) / sent if sent > (1 << 20) else None
    return (min(rtts) if rtts else None), loss


def _recheck_mode(channel: MultiStreamChannel) -> None:
    """Switch congestion control when measured RTT/loss say the path is of the other kind."""
    settings = channel.settings
    if settings.mode != "auto":
        return
    rtt, loss = _measured_loss(channel)
    mode = settings.detect_mode(rtt, loss)
    if mode != channel.resolved.mode:
        log.info("dwcp channel now in %s mode (rtt %s s, loss %s)", mode, rtt, loss)
        channel.resolved = channel.resolved.model_copy(update={"mode": mode})
        if settings.congestion is None:
            channel.set_congestion(str(MODE_DEFAULTS[mode]["congestion"]))


class _ClientSide:
    """Stream management of a connecting channel: more streams, adaptation, resumption."""

    def __init__(
        self, channel: MultiStreamChannel, host: str, port: int, settings: MultiStreamSettings
    ) -> None:
        self.channel = channel
        self.host = host
        self.port = port
        self.settings = settings
        self.target = channel.resolved.initial_streams
        self.controller: StreamCountController | None = None
        self._next_id = 1
        self._tasks: set[asyncio.Task[None]] = set()
        channel.on_connection_lost = self._on_connection_lost
        channel.on_finished = lambda _channel: self.stop()

    def spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stop(self) -> None:
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()

    async def _open(self, kind: HelloKind, timeout: float) -> int:
        stream_id = self._next_id
        self._next_id += 1
        channel = self.channel
        hello = _hello(kind, channel.session_id, stream_id, self.settings, channel.next_expected)
        opened = await open_stream(
            self.host,
            self.port,
            hello,
            timeout=timeout,
            congestion=channel.resolved.congestion,
            buffer_bytes=self.settings.socket_buffer_bytes,
            notsent_lowat=self.settings.notsent_lowat_bytes,
        )
        if channel.finished:
            opened.sock.close()
            msg = "channel finished while a stream was opening"
            raise TransportError(msg)
        channel.attach(opened.sock, stream_id, opened.congestion)
        return opened.welcome.next_expected

    async def open_streams(self, count: int) -> None:
        """Open ``count`` more streams in parallel; failures are logged, not raised."""
        if count <= 0:
            return
        timeout = self.settings.connect_timeout_s
        results = await asyncio.gather(
            *(self._open(HelloKind.JOIN, timeout) for _ in range(count)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                log.warning("dwcp could not open an extra stream: %s", result)

    def _on_connection_lost(self) -> None:
        self.spawn(self._resume())

    async def _resume(self) -> None:
        window = self.settings.resume_window_s
        deadline = time.monotonic() + window
        delay = 0.05
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                timeout = min(self.settings.connect_timeout_s, remaining)
                peer_next = await self._open(HelloKind.RESUME, timeout)
            except StreamRefusedError as exc:
                self.channel.fail(TransportError(f"connection lost and not resumable: {exc}"))
                return
            except NovaCronError as exc:
                log.info("dwcp resume attempt failed (%s); retrying", exc)
                await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(1.0, delay * 2)
                continue
            log.info("dwcp channel resumed; resending from frame %d", peer_next)
            self.channel.resume_from(peer_next)
            await self.open_streams(self.target - len(self.channel.live_streams()))
            return
        msg = f"connection lost and not resumed within the resume window ({window} s)"
        self.channel.fail(TransportError(msg))

    async def adapt(self, rtt_s: float) -> None:
        """Every interval: measure goodput, recheck the mode, grow or shrink the stream count."""
        settings, channel = self.settings, self.channel
        interval = settings.adapt_interval_s or min(2.0, max(0.5, 10 * rtt_s))
        self.controller = StreamCountController(
            settings.min_streams, settings.max_streams, self.target
        )
        last = channel.ex_acked_bytes + channel.ex_received_bytes
        last_t = time.monotonic()
        while not channel.finished:
            await asyncio.sleep(interval)
            now, total = time.monotonic(), channel.ex_acked_bytes + channel.ex_received_bytes
            goodput = 8 * (total - last) / (now - last_t)
            last, last_t = total, now
            live = channel.live_streams()
            if not live:
                continue  # resuming
            _recheck_mode(channel)
            if not settings.adapt:
                continue
            self.target = self.controller.step(goodput)
            if self.target > len(live):
                await self.open_streams(self.target - len(live))
            else:
                for stream in sorted(live, key=lambda s: -s.stream_id)[: len(live) - self.target]:
                    channel.retire(stream)
            last, last_t = channel.ex_acked_bytes + channel.ex_received_bytes, time.monotonic()


class MultiStreamListener(Listener):
    """Accepts DWCP streams; NEW ones start a channel, JOIN/RESUME ones attach to theirs."""

    def __init__(
        self,
        transport: MultiStreamTransport,
        sock: socket.socket,
        endpoint: Endpoint,
        handler: ChannelHandler,
        settings: MultiStreamSettings,
    ) -> None:
        self._transport = transport
        self._sock = sock
        self._endpoint = endpoint
        self._handler = handler
        self._settings = settings
        self.sessions: dict[bytes, MultiStreamChannel] = {}
        self._resume_timers: dict[bytes, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting = asyncio.get_running_loop().create_task(self._accept_loop())

    @property
    def endpoint(self) -> Endpoint:
        """The bound endpoint with the real port."""
        return self._endpoint

    async def close(self) -> None:
        """Stop accepting. Channels already handed out keep running (and can still resume)."""
        self._accepting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._accepting
        self._sock.close()

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as exc:
                log.warning("dwcp listener accept failed: %s", exc)
                await asyncio.sleep(0.05)
                continue
            self._spawn(self._admit(conn))

    async def _admit(self, conn: socket.socket) -> None:
        settings = self._settings
        conn.setblocking(False)
        tune_socket(conn, settings.congestion or "cubic", None, settings.notsent_lowat_bytes)
        try:
            async with asyncio.timeout(settings.connect_timeout_s):
                header, body = await read_control_frame(conn)
                if header.kind != Kind.HELLO:
                    msg = f"expected HELLO, got frame kind {header.kind}"
                    raise TransportError(msg)
                hello = Hello.decode(body)
                await self._dispatch(conn, hello)
        except (NovaCronError, OSError, TimeoutError) as exc:
            log.info("dwcp listener dropped a stream during its handshake: %s", exc)
            conn.close()

    async def _reject(self, conn: socket.socket, reason: str) -> None:
        await send_frame(conn, encode_frame(Kind.REJECT, 0, reason.encode()[:512]))
        conn.close()

    async def _welcome(self, conn: socket.socket, channel: MultiStreamChannel) -> None:
        s = self._settings
        welcome = _hello(HelloKind.NEW, channel.session_id, 0, s, channel.next_expected)
        await send_frame(conn, encode_frame(Kind.WELCOME, 0, welcome.encode()))

    async def _dispatch(self, conn: socket.socket, hello: Hello) -> None:
        settings = self._settings
        if hello.kind == HelloKind.NEW:
            info = tcp_info(conn)
            mode = settings.detect_mode(info.rtt_s if info else None, None)
            channel = MultiStreamChannel(
                role="server",
                session_id=hello.session_id,
                settings=settings,
                resolved=settings.resolved(mode),
                peer_window=hello.recv_window,
                peer_window_frames=hello.window_frames,
                peer_max_frame=hello.max_frame,
            )
            channel.on_connection_lost = lambda: self._await_resume(channel)
            channel.on_finished = self._forget
            self.sessions[hello.session_id] = channel
            await self._welcome(conn, channel)
            congestion = set_congestion(conn, channel.resolved.congestion)
            channel.attach(conn, hello.stream_id, congestion)
            self._spawn(self._serve(channel))
            return
        channel_or_none = self.sessions.get(hello.session_id)
        if channel_or_none is None or channel_or_none.finished:
            await self._reject(conn, "unknown or expired session: open a new channel")
            return
        channel = channel_or_none
        if hello.kind == HelloKind.JOIN and (refusal := self._join_refusal(channel, hello)):
            await self._reject(conn, refusal)
            return
        if hello.kind == HelloKind.RESUME:
            timer = self._resume_timers.pop(channel.session_id, None)
            if timer is not None:
                timer.cancel()
            channel.drop_streams()
        await self._welcome(conn, channel)
        if hello.kind == HelloKind.JOIN and (refusal := self._join_refusal(channel, hello)):
            # Another JOIN got in while this one was welcomed: _admit closes the socket.
            raise TransportError(refusal)
        congestion = set_congestion(conn, channel.resolved.congestion)
        channel.attach(conn, hello.stream_id, congestion)
        if hello.kind == HelloKind.RESUME:
            channel.resume_from(hello.next_expected)

    def _join_refusal(self, channel: MultiStreamChannel, hello: Hello) -> str | None:
        """Why a JOIN may not add a stream to ``channel`` (None: it may)."""
        limit = self._settings.max_streams
        if hello.stream_id in channel.streams:
            return (
                f"stream id {hello.stream_id} is already attached to this session: "
                "every stream of a channel needs its own id"
            )
        if len(channel.streams) >= limit:
            return (
                f"the channel already has {len(channel.streams)} streams, the most this "
                f"listener allows (max_streams={limit}): open no more"
            )
        return None

    async def _serve(self, channel: MultiStreamChannel) -> None:
        try:
            await self._handler(channel)
        except NovaCronError as exc:
            log.warning("dwcp handler ended with %s", exc)
        except Exception:
            log.exception("dwcp handler failed")

    def _await_resume(self, channel: MultiStreamChannel) -> None:
        window = self._settings.resume_window_s

        def expire() -> None:
            self._resume_timers.pop(channel.session_id, None)
            channel.fail(TransportError(f"connection lost and not resumed within {window} s"))

        self._resume_timers[channel.session_id] = asyncio.get_running_loop().call_later(
            window, expire
        )

    def _forget(self, channel: MultiStreamChannel) -> None:
        self.sessions.pop(channel.session_id, None)
        timer = self._resume_timers.pop(channel.session_id, None)
        if timer is not None:
            timer.cancel()


class MultiStreamTransport(Transport):
    """DWCP multi-stream transport; settings as in :class:`MultiStreamSettings`."""

    name = "dwcp"
    max_frame_size = DEFAULT_MAX_FRAME
    max_streams = STREAM_LIMIT

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.config = MultiStreamSettings.from_sources(self.settings)

    async def listen(self, endpoint: Endpoint, handler: ChannelHandler) -> MultiStreamListener:
        """Listen on ``endpoint``; ``handler(channel)`` runs in its own task per channel."""
        settings = MultiStreamSettings.from_sources(self.settings, endpoint.options)
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                endpoint.host, endpoint.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            family, kind, proto, _, address = infos[0]
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # Accepted sockets inherit buffer sizes, and with them the window scale.
            tune_socket(sock, settings.congestion or "cubic", settings.socket_buffer_bytes)
            sock.bind(address)
            sock.listen(1024)
            sock.setblocking(False)
        except OSError as exc:
            msg = f"cannot listen on {endpoint.host}:{endpoint.port}: {exc}"
            raise TransportError(msg) from exc
        bound = endpoint.model_copy(update={"port": sock.getsockname()[1]})
        return MultiStreamListener(self, sock, bound, handler, settings)

    async def connect(
        self,
        endpoint: Endpoint,
        *,
        timeout: float = 10.0,
    ) -> MultiStreamChannel:
        """Open a channel: first stream, mode detection, initial streams, then adaptation."""
        settings = MultiStreamSettings.from_sources(self.settings, endpoint.options)
        session = os.urandom(16)
        provisional = settings.resolved(settings.detect_mode(None, None))
        opened = await open_stream(
            endpoint.host,
            endpoint.port,
            _hello(HelloKind.NEW, session, 0, settings, 0),
            timeout=timeout,
            congestion=provisional.congestion,
            buffer_bytes=settings.socket_buffer_bytes,
            notsent_lowat=settings.notsent_lowat_bytes,
        )
        try:
            # The kernel's RTT from the TCP handshake, not the HELLO round trip, which also
            # counts how quickly the peer's event loop got to us.
            info = tcp_info(opened.sock)
            rtt = info.rtt_s if info and info.rtt_s > 0 else opened.rtt_s
            resolved = settings.resolved(settings.detect_mode(rtt, None))
            welcome = opened.welcome
            channel = MultiStreamChannel(
                role="client",
                session_id=session,
                settings=settings,
                resolved=resolved,
                peer_window=welcome.recv_window,
                peer_window_frames=welcome.window_frames,
                peer_max_frame=welcome.max_frame,
            )
            congestion = opened.congestion
            if congestion != resolved.congestion:
                congestion = set_congestion(opened.sock, resolved.congestion)
            channel.attach(opened.sock, 0, congestion)
        except BaseException:
            opened.sock.close()
            raise
        client = _ClientSide(channel, endpoint.host, endpoint.port, settings)
        try:
            await client.open_streams(resolved.initial_streams - 1)
        except BaseException:
            # Cancelled (a caller's timeout): nobody will hold this channel, so end it here
            # and tell the listener, which would otherwise keep it waiting for a resume.
            channel.abandon(TransportError("connect cancelled while opening extra streams"))
            raise
        if settings.adapt or settings.mode == "auto":
            client.spawn(client.adapt(rtt))
        return channel
