"""Regression tests for the security review of novacron-pqc (one section per finding).

Everything runs the real plugin: real handshakes, a real uvicorn server on 127.0.0.1 or the
httpx ASGI transport, the real TCP transport. The only stand-ins are fault injectors, each
named in its test's docstring (a man in the middle, a raw socket, a hand-made HELLO).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request

from novacron_pqc import http_auth, kem
from novacron_pqc.http_auth import HELLO_PATH, AuthMiddleware, FrameQueueChannel
from novacron_pqc.http_client import PqcHttpAuth
from novacron_pqc.identity import EnrolledKeys, NodeIdentity, UntrustedPeerError
from novacron_pqc.provider import PqcSecurityProvider
from novacron_pqc.wire import MAX_HANDSHAKE_FRAME, HandshakeMsg, HandshakeRefusedError, pack, unpack
from novacron_sdk.builtin.tcp_transport import TcpTransport
from novacron_sdk.errors import NovaCronError, SecurityError
from novacron_sdk.plugin.manager import NovaCronPluginManager
from novacron_sdk.security.channel import secure_channel
from novacron_sdk.testing.waiting import eventually
from novacron_sdk.transport import framing
from novacron_sdk.transport.interface import Channel, Endpoint

MIB = 1024 * 1024


def make_app(executed: list[dict[str, Any]]) -> FastAPI:
    """A control API whose POST records every time it runs."""
    app = FastAPI()

    @app.get("/v1/status")
    async def status(request: Request) -> dict[str, str]:
        return {"peer": request.scope["state"]["novacron_peer"]}

    @app.post("/v1/vms", status_code=201)
    async def create(body: dict[str, Any]) -> dict[str, Any]:
        executed.append(body)
        return {"created": body["name"]}

    return app


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """``app`` on uvicorn at 127.0.0.1; yields its URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve())
    try:
        await eventually(lambda: srv.started or task.done(), "uvicorn serves")
        assert srv.started, task.exception()
        port = srv.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


async def handshake(a: PqcSecurityProvider, b: PqcSecurityProvider) -> list[Any]:
    """Both ends of one handshake over an in-memory channel; exceptions are returned."""
    left, right = FrameQueueChannel.pair()
    return await asyncio.gather(
        a.handshake(left, role="initiator"),
        b.handshake(right, role="responder"),
        return_exceptions=True,
    )


def hello_from(public: NodeIdentity, settings: bytes | None = None) -> bytes:
    """A HELLO made from an enrolled node's *public* key only (no private key needed)."""
    if settings is None:
        settings = json.dumps({"aead": "aes-256-gcm", "rotate_bytes": 1 << 30}).encode()
    return pack(
        HandshakeMsg.HELLO,
        settings,
        public.name.encode(),
        public.public.encode_keys(),
        kem.KemInitiator().offer.encode(),
        os.urandom(32),
    )


# -- 2. a forged 401 must not make one signed request run twice --------------------------


class ForgedUnauthorized(httpx.AsyncBaseTransport):
    """Fault injector, a man in the middle: forwards every request to the real server, and
    answers the first signed request for ``path`` with a forged, unauthenticated 401
    ("unknown or expired API session") after the server ran it."""

    def __init__(self, path: str) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.path = path
        self.forged = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if not self.forged and request.url.path == self.path and "authorization" in request.headers:
            self.forged += 1
            await response.aread()
            error = {"error": "unknown or expired API session; handshake again"}
            return httpx.Response(401, json={**error, "kind": "SecurityError"})
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class Recorder(httpx.AsyncBaseTransport):
    """Not a fault: forwards to the real server and records (method, path, status)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.seen: list[tuple[str, str, int]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        self.seen.append((request.method, request.url.path, response.status_code))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_forged_401_does_not_run_a_post_twice(pair) -> None:
    """Man in the middle (ForgedUnauthorized): the POST ran once, the client says so."""
    a, b = pair
    executed: list[dict[str, Any]] = []
    async with serve(AuthMiddleware(make_app(executed), b.provider())) as url:
        mitm = ForgedUnauthorized("/v1/vms")
        async with httpx.AsyncClient(
            base_url=url, auth=PqcHttpAuth(a.provider()), transport=mitm
        ) as http:
            with pytest.raises(SecurityError) as caught:
                await http.post("/v1/vms", json={"name": "vm1"})
            assert executed == [{"name": "vm1"}]
            message = str(caught.value)
            assert "unauthenticated HTTP 401" in message
            assert "was not resent" in message
            assert "check whether it took effect" in message
            # The client stays usable: the next request runs once, in a new session.
            assert (await http.post("/v1/vms", json={"name": "vm2"})).status_code == 201
    assert executed == [{"name": "vm1"}, {"name": "vm2"}]


async def test_forged_401_on_a_get_is_retried_once(pair) -> None:
    """Man in the middle (ForgedUnauthorized): an idempotent GET is resent, once."""
    a, b = pair
    async with serve(AuthMiddleware(make_app([]), b.provider())) as url:
        mitm = ForgedUnauthorized("/v1/status")
        async with httpx.AsyncClient(
            base_url=url, auth=PqcHttpAuth(a.provider()), transport=mitm
        ) as http:
            assert (await http.get("/v1/status")).json() == {"peer": "node-a"}
    assert mitm.forged == 1


async def test_session_is_renewed_before_it_expires(pair) -> None:
    """The client handshakes again before the announced lifetime ends: never a 401."""
    a, b = pair
    # Long enough that a request right after a handshake is well inside the session (the
    # client renews a tenth of it early) on a slow machine; the sleep outlives it.
    lifetime = 2.0
    async with serve(AuthMiddleware(make_app([]), b.provider(), session_seconds=lifetime)) as url:
        recorder = Recorder()
        auth = PqcHttpAuth(a.provider())
        async with httpx.AsyncClient(base_url=url, auth=auth, transport=recorder) as http:
            assert (await http.get("/v1/status")).status_code == 200
            await asyncio.sleep(lifetime + 0.05)  # the agent's session has expired now
            assert (await http.post("/v1/vms", json={"name": "vm1"})).status_code == 201
    assert [s for s in recorder.seen if s[2] == 401] == []
    assert [p for _, p, _ in recorder.seen].count(HELLO_PATH) == 2


# -- 1. removing or replacing a pin takes effect on a running node -----------------------


async def test_removed_key_is_refused_by_a_running_node(pair) -> None:
    """`novacron keys remove` (another EnrolledKeys on the same directory, as the CLI's)."""
    a, b = pair
    client, agent = a.provider(), b.provider()
    assert not any(isinstance(r, Exception) for r in await handshake(client, agent))
    EnrolledKeys(b.enrolled.directory).remove("node-a")
    results = await handshake(client, agent)
    assert isinstance(results[1], UntrustedPeerError)
    assert "'node-a'" in str(results[1])
    assert "is not enrolled here" in str(results[1])


async def test_replaced_key_is_refused_by_a_running_node(pair) -> None:
    """`novacron keys enroll --replace`: the old key is refused, the new one accepted."""
    a, b = pair
    agent = b.provider()
    assert not any(isinstance(r, Exception) for r in await handshake(a.provider(), agent))
    new_a = NodeIdentity.generate("node-a")
    EnrolledKeys(b.enrolled.directory).enroll(new_a.public, replace=True)
    results = await handshake(a.provider(), agent)
    assert isinstance(results[1], UntrustedPeerError)
    assert "wrong key" in str(results[1])
    renewed = PqcSecurityProvider({"identity": new_a, "enrolled": a.enrolled})
    assert not any(isinstance(r, Exception) for r in await handshake(renewed, agent))


async def test_api_session_of_a_removed_peer_is_dropped(pair) -> None:
    """An API session opened before `keys remove` serves no further request."""
    a, b = pair
    executed: list[dict[str, Any]] = []
    auth = PqcHttpAuth(a.provider())
    async with (
        serve(AuthMiddleware(make_app(executed), b.provider())) as url,
        httpx.AsyncClient(base_url=url, auth=auth) as http,
    ):
        assert (await http.get("/v1/status")).status_code == 200
        EnrolledKeys(b.enrolled.directory).remove("node-a")
        with pytest.raises(SecurityError, match="no longer enrolled"):
            await http.post("/v1/vms", json={"name": "vm1"})
        with pytest.raises(SecurityError, match=r"'node-a'.*is not enrolled on 'node-b'"):
            await http.get("/v1/status")
    assert executed == []


# -- 4. a frame header alone does not make a listener reserve the frame's size -----------


@contextlib.contextmanager
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


async def test_frame_header_alone_reserves_no_payload_memory(pair) -> None:
    """Fault injector: a raw socket sends one 20-byte header announcing 64 MiB, then closes.

    The listener is what the agent's migration port runs: TCP, then the pqc handshake as
    responder. Before authentication, 20 bytes must not reserve 64 MiB.
    """
    _, b = pair
    outcome: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    async def accept(channel: Channel) -> None:
        try:
            await secure_channel(NovaCronPluginManager(), channel, "responder", b.provider())
        except NovaCronError as exc:
            outcome.set_result(exc)
        else:
            outcome.set_result(None)

    listener = await TcpTransport().listen(Endpoint(host="127.0.0.1", port=0), accept)
    header = framing.HEADER.pack(framing.MAGIC, framing.VERSION, 0, 0, 64 * MIB, 0)
    try:
        with traced():
            tracemalloc.reset_peak()
            with socket.create_connection(("127.0.0.1", listener.endpoint.port)) as raw:
                raw.sendall(header + b"x" * 1000)
            error = await asyncio.wait_for(outcome, 10)
            _, peak = tracemalloc.get_traced_memory()
    finally:
        await listener.close()
    assert error is not None
    assert "truncated frame" in str(error)
    assert peak < 4 * MIB, f"{peak} bytes were allocated for a frame header"


@pytest.mark.parametrize("sizes", [[300_000, 3 * MIB, MIB, 9 * MIB + 7, 2 * MIB, 17]])
async def test_large_frames_still_arrive_intact(sizes: list[int]) -> None:
    """The data plane: frames of every size, growing and shrinking, arrive unchanged."""
    transport = TcpTransport({"max_frame_bytes": 16 * MIB})
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def echo(channel: Channel) -> None:
        for _ in sizes:
            await received.put(await channel.recv())
        await channel.close()

    listener = await transport.listen(Endpoint(host="127.0.0.1", port=0), echo)
    channel = await transport.connect(listener.endpoint)
    try:
        frames = [os.urandom(64) * (size // 64) + os.urandom(size % 64) for size in sizes]
        for frame in frames:
            await channel.send(frame)
        for frame in frames:
            assert await asyncio.wait_for(received.get(), 10) == frame
    finally:
        await channel.close()
        await listener.close()


# -- 3. unauthenticated bodies are not read without limit ---------------------------------


class Chunks:
    """Fault injector: a request body of ``count`` chunks of 64 KiB; counts those pulled."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.count):
            self.pulled += 1
            yield b"x" * 65536


def asgi(app: Any, client: tuple[str, int] = ("127.0.0.1", 40000)) -> httpx.AsyncClient:
    """An httpx client for ``app`` through the ASGI transport, as peer ``client``."""
    transport = httpx.ASGITransport(app=app, client=client)
    return httpx.AsyncClient(transport=transport, base_url="http://agent.test")


async def test_handshake_body_is_capped_at_the_frame_limit(pair) -> None:
    """A 16 MiB HELLO is refused after at most the handshake frame limit was read."""
    _, b = pair
    body = Chunks(256)
    async with asgi(AuthMiddleware(make_app([]), b.provider())) as raw:
        r = await raw.post(HELLO_PATH, content=body)
    assert r.status_code == 413
    assert f"{MAX_HANDSHAKE_FRAME} bytes" in r.json()["error"]
    assert body.pulled * 65536 <= MAX_HANDSHAKE_FRAME + 65536


async def test_unauthenticated_body_is_not_read(pair) -> None:
    """A request without a valid session is refused before its body is read."""
    _, b = pair
    for headers in ({}, {"authorization": "NovaCron-PQC sid=nope,seq=0,mac=AA=="}):
        body = Chunks(256)
        async with asgi(AuthMiddleware(make_app([]), b.provider())) as raw:
            r = await raw.post("/v1/vms", content=body, headers=headers)
        assert r.status_code == 401
        assert body.pulled <= 1


async def test_authenticated_body_is_bounded(pair) -> None:
    """Even in a session, a body over max_body_bytes is refused and never reaches the app."""
    a, b = pair
    executed: list[dict[str, Any]] = []
    app = AuthMiddleware(make_app(executed), b.provider(), max_body_bytes=MIB)
    async with asgi(app) as http:
        http.auth = PqcHttpAuth(a.provider())
        big = {"name": "x" * (2 * MIB)}
        with pytest.raises(SecurityError, match=r"HTTP 413.*exceeds 1048576 bytes"):
            await http.post("/v1/vms", json=big)
        assert (await http.post("/v1/vms", json={"name": "vm1"})).status_code == 201
    assert executed == [{"name": "vm1"}]


# -- 6. malformed HELLO settings end as a SecurityError, with an answer to the peer --------


@pytest.mark.parametrize(
    "settings",
    [b"[" * 20000, b"[" * 3000, b'{"aead": ' * 3000],
    ids=["huge-nested-lists", "nested-lists-under-size-limit", "nested-objects"],
)
async def test_malformed_hello_settings_are_refused_cleanly(pair, settings: bytes) -> None:
    """Fault injector: a hand-made HELLO with an enrolled node's public key."""
    a, b = pair
    attacker, agent = FrameQueueChannel.pair()
    await attacker.send(hello_from(a.identity, settings))
    with pytest.raises(SecurityError, match="handshake settings"):
        await b.provider().handshake(agent, role="responder")
    assert attacker.inbox.qsize() == 1
    with pytest.raises(HandshakeRefusedError, match="handshake settings"):
        unpack(await attacker.recv(), HandshakeMsg.REPLY, 6)


# -- 5. unfinished HELLOs from one address do not lock the others out ---------------------


async def test_one_address_cannot_lock_out_the_others(pair) -> None:
    """Fault injector: 64 HELLOs from 192.0.2.66 with node-a's public key, never finished."""
    a, b = pair
    # No slot may free itself while the 64 HELLOs are answered (slowly, on a busy machine).
    app = AuthMiddleware(make_app([]), b.provider(), pending_seconds=60)
    try:
        async with asgi(app, client=("192.0.2.66", 4000)) as raw:
            answers = await asyncio.gather(
                *(raw.post(HELLO_PATH, content=hello_from(a.identity)) for _ in range(64))
            )
        # The genuine client, from another address, is served at once.
        async with asgi(app, client=("192.0.2.10", 5000)) as http:
            http.auth = PqcHttpAuth(a.provider())
            assert (await http.get("/v1/status")).json() == {"peer": "node-a"}
        statuses = [r.status_code for r in answers]
        assert statuses.count(200) == http_auth.MAX_PENDING_PER_CLIENT
        refused = [r for r in answers if r.status_code != 200]
        assert {r.status_code for r in refused} == {429}
        assert "from 192.0.2.66" in refused[0].json()["error"]
    finally:
        await app.aclose()


async def test_many_addresses_cannot_lock_out_the_others(pair) -> None:
    """Fault injector: 8 HELLOs (the per-address limit) from each of 10 addresses, never
    finished: 80 in all, beyond the 64 the agent holds. The 65th used to be refused (429) and
    every genuine client with it until the flood's handshakes expired; now each new HELLO
    drops the oldest unfinished one."""
    a, b = pair
    app = AuthMiddleware(make_app([]), b.provider(), pending_seconds=60)
    try:
        statuses = []
        for host in range(10):
            async with asgi(app, client=(f"192.0.2.{100 + host}", 4000)) as raw:
                for _ in range(http_auth.MAX_PENDING_PER_CLIENT):
                    reply = await raw.post(HELLO_PATH, content=hello_from(a.identity))
                    statuses.append(reply.status_code)
                    assert app.pending_handshakes <= http_auth.MAX_PENDING_HANDSHAKES
        assert statuses == [200] * 80
        assert app.pending_handshakes == http_auth.MAX_PENDING_HANDSHAKES
        async with asgi(app, client=("192.0.2.10", 5000)) as http:
            http.auth = PqcHttpAuth(a.provider())
            assert (await http.get("/v1/status")).json() == {"peer": "node-a"}
        assert app.pending_handshakes <= http_auth.MAX_PENDING_HANDSHAKES
    finally:
        await app.aclose()


async def test_unfinished_handshakes_expire_quickly(pair) -> None:
    """Fault injector: HELLOs never finished; their slots free after pending_seconds."""
    a, b = pair
    # The slots must stay taken while the HELLOs that fill them are sent (a handshake each,
    # slow on a busy machine), and free themselves after that.
    app = AuthMiddleware(make_app([]), b.provider(), pending_seconds=3.0)
    try:
        async with asgi(app, client=("192.0.2.66", 4000)) as raw:
            for _ in range(http_auth.MAX_PENDING_PER_CLIENT):
                assert (await raw.post(HELLO_PATH, content=hello_from(a.identity))).is_success
            assert (await raw.post(HELLO_PATH, content=hello_from(a.identity))).status_code == 429
            assert app.pending_handshakes == http_auth.MAX_PENDING_PER_CLIENT
            await eventually(lambda: not app.pending_handshakes, "the unfinished handshakes expire")
            assert (await raw.post(HELLO_PATH, content=hello_from(a.identity))).is_success
    finally:
        await app.aclose()
