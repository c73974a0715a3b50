"""Authenticated control API, server side: the handshake over HTTP, then a MAC on every message.

A client (:class:`novacron_pqc.http_client.PqcHttpAuth`) runs the provider's handshake through
two POSTs (``/v1/auth/hello``, ``/v1/auth/finish``); both sides then derive per-direction MAC
keys from the session. Each request carries ``Authorization: NovaCron-PQC sid=..,seq=..,mac=..``
over method, path, query, sequence number and body hash; each response carries a MAC over the
request's MAC, status and body, which the client checks. Sequence numbers are single-use, so
a captured request cannot be replayed. Bodies are authenticated, not encrypted.
:class:`AuthMiddleware` is the ASGI side; only ``GET /health`` passes unauthenticated.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, overload

from novacron_pqc.wire import HandshakeMsg, pack
from novacron_sdk.errors import SecurityError, TransportError
from novacron_sdk.security.interface import SecureSession, SecurityProvider
from novacron_sdk.transport.interface import Channel, ChannelStats

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HELLO_PATH = "/v1/auth/hello"
FINISH_PATH = "/v1/auth/finish"
PUBLIC_PATHS = frozenset({("GET", "/health")})
SCHEME = "NovaCron-PQC"
HANDSHAKE_HEADER = "x-novacron-handshake"
RESPONSE_MAC_HEADER = "x-novacron-response-mac"
REPLAY_WINDOW = 4096
MAX_PENDING_HANDSHAKES = 64
MAX_SESSIONS = 4096


class _Exporting(Protocol):
    def export(self, label: str, length: int = 32) -> bytes: ...


class FrameQueueChannel(Channel):
    """One end of an in-memory channel pair: carries handshake frames over HTTP bodies."""

    def __init__(self, inbox: asyncio.Queue[bytes], outbox: asyncio.Queue[bytes]) -> None:
        self.inbox = inbox
        self.outbox = outbox

    @classmethod
    def pair(cls) -> tuple[FrameQueueChannel, FrameQueueChannel]:
        """Two connected ends."""
        a: asyncio.Queue[bytes] = asyncio.Queue()
        b: asyncio.Queue[bytes] = asyncio.Queue()
        return cls(a, b), cls(b, a)

    async def send(self, frame: bytes) -> None:
        """Queue a frame for the other end."""
        self.outbox.put_nowait(bytes(frame))

    async def recv(self) -> bytes:
        """The next frame from the other end."""
        return await self.inbox.get()

    async def drain(self) -> None:
        """Nothing to flush."""

    async def close(self) -> None:
        """Nothing to close."""

    def stats(self) -> ChannelStats:
        """Not counted."""
        return ChannelStats(transport="http-handshake")


def _body_hash(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()


def request_mac(key: bytes, method: str, target: str, seq: int, body: bytes) -> bytes:
    """MAC of one request: method, path with query, sequence number, body hash."""
    data = b"\n".join([method.upper().encode(), target.encode(), str(seq).encode()])
    return hmac.new(key, data + b"\n" + _body_hash(body), hashlib.sha256).digest()


def response_mac(key: bytes, req_mac: bytes, status: int, body: bytes) -> bytes:
    """MAC of one response, bound to the request it answers."""
    data = req_mac + str(status).encode() + b"\n" + _body_hash(body)
    return hmac.new(key, data, hashlib.sha256).digest()


def session_keys(session: SecureSession) -> tuple[bytes, bytes]:
    exporter: _Exporting | None = session if hasattr(session, "export") else None
    if exporter is None:
        msg = "the security provider's sessions cannot export keys; API auth needs export()"
        raise SecurityError(msg)
    return exporter.export("http request"), exporter.export("http response")


@dataclass
class _ApiSession:
    peer_id: str
    request_key: bytes
    response_key: bytes
    expires: float
    highest: int = -1
    seen: set[int] = field(default_factory=set)

    def accept(self, seq: int) -> None:
        if seq in self.seen or seq <= self.highest - REPLAY_WINDOW:
            msg = f"replayed request rejected: sequence {seq} was already used by {self.peer_id}"
            raise SecurityError(msg)
        self.seen.add(seq)
        if seq > self.highest:
            self.highest = seq
            self.seen = {s for s in self.seen if s > seq - REPLAY_WINDOW}


def _target(scope: Scope) -> str:
    path = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string") or b""
    return (bytes(path) + (b"?" + bytes(query) if query else b"")).decode("latin-1")


class AuthMiddleware:
    """ASGI middleware: only enrolled, mutually authenticated peers reach the wrapped app."""

    def __init__(
        self, app: AsgiApp, provider: SecurityProvider, *, session_seconds: float = 600.0
    ) -> None:
        self.app = app
        self.provider = provider
        self.session_seconds = session_seconds
        self._pending: dict[str, tuple[FrameQueueChannel, asyncio.Task[SecureSession]]] = {}
        self._sessions: dict[str, _ApiSession] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route handshakes, check request MACs, sign responses."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if (method, path) in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        try:
            if method == "POST" and path == HELLO_PATH:
                await self._hello(body, send)
                return
            if method == "POST" and path == FINISH_PATH:
                await self._finish(scope, body, send)
                return
            session, req_mac = self._check(scope, body)
        except SecurityError as exc:
            log.warning("rejected %s %s: %s", method, path, exc)
            await _json(send, 401, {"error": str(exc), "kind": "SecurityError"})
            return
        await self._forward(scope, body, send, session, req_mac)

    async def _hello(self, body: bytes, send: Send) -> None:
        if len(self._pending) >= MAX_PENDING_HANDSHAKES:
            msg = "too many handshakes in progress; retry in a few seconds"
            raise SecurityError(msg)
        mine, theirs = FrameQueueChannel.pair()
        task = asyncio.create_task(self.provider.handshake(mine, role="responder"))
        handshake_id = secrets.token_hex(16)
        self._pending[handshake_id] = (theirs, task)

        def forget(done: asyncio.Task[SecureSession]) -> None:
            self._pending.pop(handshake_id, None)
            if not done.cancelled() and done.exception() is not None:
                log.warning("API handshake refused: %s", done.exception())

        task.add_done_callback(forget)
        await theirs.send(body)
        reply = await next_frame(theirs, task, refuse=True)
        await _raw(send, 200, reply, [(HANDSHAKE_HEADER.encode(), handshake_id.encode())])

    async def _finish(self, scope: Scope, body: bytes, send: Send) -> None:
        handshake_id = _header(scope, HANDSHAKE_HEADER)
        pending = self._pending.get(handshake_id or "")
        if handshake_id is None or pending is None:
            msg = "unknown or expired handshake; start again with /v1/auth/hello"
            raise SecurityError(msg)
        theirs, task = pending
        await theirs.send(body)
        reply = await next_frame(theirs, task, refuse=True)
        try:
            session = await task
        except SecurityError:
            await _raw(send, 401, reply, [])
            return
        request_key, response_key = session_keys(session)
        if len(self._sessions) >= MAX_SESSIONS:
            now = time.monotonic()
            self._sessions = {k: s for k, s in self._sessions.items() if s.expires > now}
        self._sessions[handshake_id] = _ApiSession(
            session.peer_id, request_key, response_key, time.monotonic() + self.session_seconds
        )
        await _raw(send, 200, reply, [])

    def _check(self, scope: Scope, body: bytes) -> tuple[_ApiSession, bytes]:
        header = _header(scope, "authorization")
        if not header or not header.startswith(SCHEME + " "):
            msg = (
                "authentication required: this agent accepts only enrolled peers "
                f"({SCHEME} handshake at {HELLO_PATH}); the caller (the novacron command, "
                "or the source agent of a migration) must run with security enabled "
                "(security.enabled=true) and its node key enrolled on this agent"
            )
            raise SecurityError(msg)
        try:
            parts = dict(p.strip().split("=", 1) for p in header[len(SCHEME) + 1 :].split(","))
            sid, seq, mac = parts["sid"], int(parts["seq"]), base64.b64decode(parts["mac"])
        except (KeyError, ValueError) as exc:
            msg = f"malformed {SCHEME} authorization header"
            raise SecurityError(msg) from exc
        session = self._sessions.get(sid)
        if session is None or session.expires < time.monotonic():
            self._sessions.pop(sid, None)
            msg = "unknown or expired API session; handshake again"
            raise SecurityError(msg)
        expected = request_mac(session.request_key, scope["method"], _target(scope), seq, body)
        if not hmac.compare_digest(mac, expected):
            msg = f"request MAC from {session.peer_id} does not verify: the request was altered"
            raise SecurityError(msg)
        session.accept(seq)
        return session, mac

    async def _forward(
        self, scope: Scope, body: bytes, send: Send, session: _ApiSession, req_mac: bytes
    ) -> None:
        start: Message = {}
        chunks: list[bytes] = []
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return {"type": "http.disconnect"}
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))

        scope = dict(scope)
        scope.setdefault("state", {})["novacron_peer"] = session.peer_id
        await self.app(scope, replay, capture)
        out = b"".join(chunks)
        status = int(start.get("status", 500))
        mac = response_mac(session.response_key, req_mac, status, out)
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers += [
            (b"content-length", str(len(out)).encode()),
            (RESPONSE_MAC_HEADER.encode(), base64.b64encode(mac)),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": out})


@overload
async def next_frame(
    channel: FrameQueueChannel, task: asyncio.Task[SecureSession], *, refuse: Literal[True]
) -> bytes: ...
@overload
async def next_frame(
    channel: FrameQueueChannel, task: asyncio.Task[SecureSession], *, refuse: bool = False
) -> bytes | None: ...
async def next_frame(
    channel: FrameQueueChannel, task: asyncio.Task[SecureSession], *, refuse: bool = False
) -> bytes | None:
    """The handshake's next outgoing frame, or None when it finished instead.

    When the handshake failed without a last word, ``refuse`` turns its error into an ERROR
    frame for the peer (the server side); otherwise the error is raised (the client side).
    """
    if channel.inbox.empty() and task.done():
        getter = None
    else:
        getter = asyncio.ensure_future(channel.recv())
        await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            return getter.result()
        getter.cancel()
    error = task.exception() if not task.cancelled() else SecurityError("handshake cancelled")
    if error is None:
        return None if not refuse else pack(HandshakeMsg.ERROR, b"handshake already finished")
    if refuse:
        return pack(HandshakeMsg.ERROR, str(error).encode())
    raise error


def _header(scope: Scope, name: str) -> str | None:
    key = name.encode()
    for k, v in scope.get("headers", []):
        if k.lower() == key:
            return bytes(v).decode("latin-1")
    return None


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            msg = "client disconnected"
            raise TransportError(msg)
        chunks.append(bytes(message.get("body", b"")))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _raw(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [
        (b"content-type", b"application/octet-stream"),
        (b"content-length", str(len(body)).encode()),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
