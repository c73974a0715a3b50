"""Authenticated control API, server side: the handshake over HTTP, then a MAC on every message.

A client (:class:`novacron_pqc.http_client.PqcHttpAuth`) runs the provider's handshake through
two POSTs (``/v1/auth/hello``, ``/v1/auth/finish``); both sides then derive per-direction MAC
keys from the session. Each request carries ``Authorization: NovaCron-PQC sid=..,seq=..,mac=..``
over method, path, query, sequence number and body hash; each response carries a MAC over the
request's MAC, status and body, which the client checks. Sequence numbers are single-use, so
a captured request cannot be replayed. Bodies are authenticated, not encrypted.
:class:`AuthMiddleware` is the ASGI side; only ``GET /health`` passes unauthenticated.

Before authentication the middleware holds little for anyone: a handshake body is read up to
the handshake frame limit; any other request's body is read (up to ``max_body_bytes``) only
once its Authorization header names a known, unexpired session of a still-enrolled peer; an
unfinished handshake is dropped after ``pending_seconds``, one client address holds at most
:data:`MAX_PENDING_PER_CLIENT` of them, and when :data:`MAX_PENDING_HANDSHAKES` are held a new
HELLO drops the oldest.
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

from novacron_pqc.wire import MAX_HANDSHAKE_FRAME, HandshakeMsg, pack
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
SESSION_SECONDS_HEADER = "x-novacron-session-seconds"
"""On the answer to /v1/auth/finish: the API session's lifetime, so the client renews it in time."""
REPLAY_WINDOW = 4096
MAX_PENDING_HANDSHAKES = 64
"""Unfinished handshakes held at once, from all clients together (a new HELLO beyond it drops
the oldest)."""
MAX_PENDING_PER_CLIENT = 8
"""Unfinished handshakes held at once for one client address (``scope["client"]``)."""
PENDING_HANDSHAKE_SECONDS = 3.0
"""An unfinished handshake is dropped this long after its HELLO (a client answers at once)."""
MAX_BODY_BYTES = 4 * 1024 * 1024
"""Default limit of an authenticated request's body (the agent's own request limit)."""
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


class _RefusedError(SecurityError):
    """A refusal with its own HTTP status (413 too large, 429 too many handshakes)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


@dataclass
class _Pending:
    channel: FrameQueueChannel
    task: asyncio.Task[SecureSession]
    client: str


@dataclass
class _ApiSession:
    peer_id: str
    peer_fingerprint: str | None
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
        self,
        app: AsgiApp,
        provider: SecurityProvider,
        *,
        session_seconds: float = 600.0,
        max_body_bytes: int = MAX_BODY_BYTES,
        pending_seconds: float = PENDING_HANDSHAKE_SECONDS,
    ) -> None:
        self.app = app
        self.provider = provider
        self.session_seconds = session_seconds
        self.max_body_bytes = max_body_bytes
        self.pending_seconds = pending_seconds
        self._pending: dict[str, _Pending] = {}
        self._sessions: dict[str, _ApiSession] = {}

    @property
    def pending_handshakes(self) -> int:
        """Handshakes started (HELLO answered) and not finished yet."""
        return len(self._pending)

    async def aclose(self) -> None:
        """Drop every unfinished handshake (for a server that stops)."""
        tasks = [pending.task for pending in self._pending.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route handshakes, check request MACs, sign responses."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if (method, path) in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            if method == "POST" and path in (HELLO_PATH, FINISH_PATH):
                # Nobody is authenticated yet: read no more than one handshake message.
                body = await _read_body(scope, receive, MAX_HANDSHAKE_FRAME, "a handshake message")
                if path == HELLO_PATH:
                    await self._hello(scope, body, send)
                else:
                    await self._finish(scope, body, send)
                return
            # The session is checked before a byte of the body is read, the MAC after.
            session, seq, mac = self._session(scope)
            body = await _read_body(scope, receive, self.max_body_bytes, "an API request")
            req_mac = self._check_mac(scope, session, seq, mac, body)
        except SecurityError as exc:
            log.warning("rejected %s %s: %s", method, path, exc)
            status = exc.status if isinstance(exc, _RefusedError) else 401
            await _json(send, status, {"error": str(exc), "kind": "SecurityError"})
            return
        await self._forward(scope, body, send, session, req_mac)

    async def _hello(self, scope: Scope, body: bytes, send: Send) -> None:
        client = _client(scope)
        if sum(1 for p in self._pending.values() if p.client == client) >= MAX_PENDING_PER_CLIENT:
            msg = (
                f"too many unfinished handshakes from {client} (at most "
                f"{MAX_PENDING_PER_CLIENT}); finish them, or retry in {self.pending_seconds:g} s"
            )
            raise _RefusedError(429, msg)
        if len(self._pending) >= MAX_PENDING_HANDSHAKES:
            # Full (HELLOs from many addresses): make room by dropping the oldest unfinished
            # handshake, as a SYN cache does. A genuine client finishes within a round trip,
            # so it is not the oldest; refusing the new HELLO instead would let a flood from
            # a few addresses lock every client out for ``pending_seconds``.
            oldest_id = next(iter(self._pending))
            oldest = self._pending.pop(oldest_id)
            oldest.task.cancel()
            log.info("handshake table full: dropped the oldest unfinished one (%s)", oldest.client)
        mine, theirs = FrameQueueChannel.pair()
        task = asyncio.create_task(self.provider.handshake(mine, role="responder"))
        handshake_id = secrets.token_hex(16)
        self._pending[handshake_id] = _Pending(theirs, task, client)
        # A genuine client sends FINISH as soon as it has the reply: a handshake left
        # unfinished only holds a slot, so it is dropped early.
        expiry = asyncio.get_running_loop().call_later(self.pending_seconds, task.cancel)

        def forget(done: asyncio.Task[SecureSession]) -> None:
            expiry.cancel()
            self._pending.pop(handshake_id, None)
            if done.cancelled():
                log.info("unfinished API handshake from %s dropped", client)
            elif done.exception() is not None:
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
        theirs, task = pending.channel, pending.task
        await theirs.send(body)
        reply = await next_frame(theirs, task, refuse=True)
        await asyncio.wait({task})  # not `await task`: its cancellation is not ours
        if task.cancelled() or task.exception() is not None:
            await _raw(send, 401, reply, [])
            return
        session = task.result()
        request_key, response_key = session_keys(session)
        if len(self._sessions) >= MAX_SESSIONS:
            now = time.monotonic()
            self._sessions = {k: s for k, s in self._sessions.items() if s.expires > now}
        self._sessions[handshake_id] = _ApiSession(
            session.peer_id,
            getattr(session, "peer_fingerprint", None),
            request_key,
            response_key,
            time.monotonic() + self.session_seconds,
        )
        lifetime = (SESSION_SECONDS_HEADER.encode(), repr(float(self.session_seconds)).encode())
        await _raw(send, 200, reply, [lifetime])

    def _session(self, scope: Scope) -> tuple[_ApiSession, int, bytes]:
        """The live session the Authorization header names, its sequence number and MAC."""
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
        if not self._still_trusted(session):
            self._sessions.pop(sid, None)
            msg = (
                f"peer {session.peer_id!r} is no longer enrolled on this agent (its key was "
                "removed or replaced): its API session ended; to trust it again, run on the "
                f"agent's host: novacron keys enroll {session.peer_id}.pub"
            )
            raise SecurityError(msg)
        return session, seq, mac

    def _still_trusted(self, session: _ApiSession) -> bool:
        """Whether the provider still trusts the session's peer (when it can tell)."""
        still_trusts = getattr(self.provider, "still_trusts", None)
        if session.peer_fingerprint is None or not callable(still_trusts):
            return True
        return still_trusts(session.peer_fingerprint) is True

    def _check_mac(
        self, scope: Scope, session: _ApiSession, seq: int, mac: bytes, body: bytes
    ) -> bytes:
        """The request's MAC once it verifies and its sequence number was not used before."""
        expected = request_mac(session.request_key, scope["method"], _target(scope), seq, body)
        if not hmac.compare_digest(mac, expected):
            msg = f"request MAC from {session.peer_id} does not verify: the request was altered"
            raise SecurityError(msg)
        session.accept(seq)
        return mac

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


def _client(scope: Scope) -> str:
    """The client's address (without port), as the server saw it."""
    client = scope.get("client")
    return str(client[0]) if client else "an unknown address"


async def _read_body(scope: Scope, receive: Receive, limit: int, what: str) -> bytes:
    """The request body; a 413 refusal, before reading on, once it exceeds ``limit`` bytes."""
    too_large = _RefusedError(
        413, f"request body exceeds {limit} bytes, the limit for {what}; send a smaller one"
    )
    declared = _header(scope, "content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            msg = "client disconnected"
            raise TransportError(msg)
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
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
