"""The control-API authentication on a real uvicorn server on 127.0.0.1 with a real httpx client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request

from novacron_pqc.http_auth import AuthMiddleware
from novacron_pqc.http_client import PqcHttpAuth
from novacron_sdk.errors import SecurityError


def make_app() -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/status")
    async def status(request: Request) -> dict[str, str]:
        return {"peer": request.scope["state"]["novacron_peer"]}

    @app.post("/v1/echo")
    async def echo(body: dict[str, int]) -> dict[str, int]:
        return body

    return app


@pytest.fixture
async def server(pair) -> AsyncIterator[str]:
    _, b = pair
    async for url in serve(AuthMiddleware(make_app(), b.provider(), session_seconds=600)):
        yield url


@pytest.fixture
async def plain_server() -> AsyncIterator[str]:
    """The same API without authentication: what an agent with security disabled serves."""
    async for url in serve(make_app()):
        yield url


async def serve(app: Any) -> AsyncIterator[str]:
    """``app`` on uvicorn at 127.0.0.1: yields its URL, stops when resumed."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve())
    while not srv.started:
        await asyncio.sleep(0.01)
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)


async def test_health_is_open_and_reveals_nothing(server) -> None:
    async with httpx.AsyncClient(base_url=server) as http:
        r = await http.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


async def test_unauthenticated_requests_are_refused(server) -> None:
    async with httpx.AsyncClient(base_url=server) as http:
        for method, path in [("GET", "/v1/status"), ("GET", "/openapi.json"), ("GET", "/docs")]:
            r = await http.request(method, path)
            assert r.status_code == 401
            assert "authentication required" in r.json()["error"]
            assert "the caller" in r.json()["error"]
            assert "must run with security enabled (security.enabled=true)" in r.json()["error"]
            assert "node-" not in r.text  # no host detail leaks


async def test_enrolled_client_is_served_and_responses_are_checked(pair, server) -> None:
    a, _ = pair
    auth = PqcHttpAuth(a.provider())
    async with httpx.AsyncClient(base_url=server, auth=auth) as http:
        assert (await http.get("/v1/status")).json() == {"peer": "node-a"}
        for value in range(3):
            assert (await http.post("/v1/echo", json={"n": value})).json() == {"n": value}
        results = await asyncio.gather(*(http.post("/v1/echo", json={"n": i}) for i in range(8)))
        assert [r.json()["n"] for r in results] == list(range(8))
    assert auth.peer_id == "node-b"
    assert auth.peer_fingerprint == pair[1].identity.public.fingerprint


async def test_unenrolled_client_is_refused(stranger, server) -> None:
    async with httpx.AsyncClient(base_url=server, auth=PqcHttpAuth(stranger.provider())) as http:
        with pytest.raises(SecurityError) as caught:
            await http.get("/v1/status")
    # The refusing agent is named, by URL and node name, as where to enrol the key.
    message = str(caught.value)
    assert message.startswith(f"agent {server} refused the handshake: peer 'stranger' (sha256:")
    assert message.endswith(
        "is not enrolled on 'node-b'; to trust it, run on node-b: novacron keys enroll stranger.pub"
    )


async def test_agent_without_security_is_named_with_the_fix(pair, plain_server) -> None:
    a, _ = pair
    async with httpx.AsyncClient(base_url=plain_server, auth=PqcHttpAuth(a.provider())) as http:
        with pytest.raises(SecurityError) as caught:
            await http.get("/v1/status")
    assert str(caught.value) == (
        f"agent {plain_server} does not have security enabled (its API has no handshake "
        "endpoint /v1/auth/hello): enable security.enabled there, or disable it here"
    )


async def test_client_refuses_an_unenrolled_agent(pair, stranger, server) -> None:
    stranger.enrolled.enroll(pair[1].identity.public)
    lonely = PqcHttpAuth(pair[0].provider())
    pair[0].enrolled.directory.joinpath("node-b.pub").unlink()
    pair[0].enrolled.reload()
    async with httpx.AsyncClient(base_url=server, auth=lonely) as http:
        with pytest.raises(SecurityError, match=r"'node-b'.*not enrolled here"):
            await http.get("/v1/status")


async def test_replayed_and_tampered_requests_are_refused(pair, server) -> None:
    a, _ = pair
    sent: list[httpx.Request] = []

    async def keep(request: httpx.Request) -> None:
        sent.append(request)

    auth = PqcHttpAuth(a.provider())
    async with httpx.AsyncClient(
        base_url=server, auth=auth, event_hooks={"request": [keep]}
    ) as http:
        assert (await http.post("/v1/echo", json={"n": 1})).status_code == 200
    signed = sent[-1]
    async with httpx.AsyncClient(base_url=server) as raw:
        again = await raw.post(signed.url, content=signed.content, headers=signed.headers)
        assert again.status_code == 401
        assert "replayed request rejected" in again.json()["error"]
        headers = {k: v for k, v in signed.headers.items() if k != "content-length"}
        headers["authorization"] = headers["authorization"].replace("seq=0", "seq=99")
        changed = await raw.post(signed.url, content=b'{"n": 2}', headers=headers)
        assert changed.status_code == 401
        assert "does not verify" in changed.json()["error"]


async def test_forged_session_is_refused(server) -> None:
    async with httpx.AsyncClient(base_url=server) as raw:
        r = await raw.get(
            "/v1/status", headers={"authorization": "NovaCron-PQC sid=x,seq=0,mac=AA=="}
        )
    assert r.status_code == 401
    assert "unknown or expired API session" in r.json()["error"]
