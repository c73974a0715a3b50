"""Authenticated control API, client side: an httpx Auth that handshakes, MACs and checks."""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import math
import time
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from novacron_pqc.http_auth import (
    FINISH_PATH,
    HANDSHAKE_HEADER,
    HELLO_PATH,
    RESPONSE_MAC_HEADER,
    SCHEME,
    SESSION_SECONDS_HEADER,
    FrameQueueChannel,
    next_frame,
    request_mac,
    response_mac,
    session_keys,
)
from novacron_pqc.wire import HandshakeRefusedError
from novacron_sdk.errors import SecurityError
from novacron_sdk.security.interface import SecurityProvider

NO_ENDPOINT = frozenset({404, 405})
"""Answers to the first handshake POST from an API without the handshake: security is off."""
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods resent once, after a new handshake, when the agent says it lost the API session."""
FALLBACK_SESSION_SECONDS = 60.0
"""Session lifetime assumed when the agent does not say (an agent of an older version)."""
MAX_SESSION_MARGIN = 30.0
"""A session is renewed this long (at most; 10 % of a short lifetime) before it expires."""


class PqcHttpAuth(httpx.Auth):
    """httpx Auth: handshakes with the agent once, then MACs requests and checks responses."""

    requires_response_body = True

    def __init__(self, provider: SecurityProvider) -> None:
        self.provider = provider
        self.peer_id: str | None = None
        self.peer_fingerprint: str | None = None
        self._sid: str | None = None
        self._keys: tuple[bytes, bytes] | None = None
        self._seq = 0
        self._renew_at = 0.0
        self._lock = asyncio.Lock()

    def sync_auth_flow(self, request: httpx.Request) -> Any:
        """Not supported: the handshake is async."""
        msg = "PqcHttpAuth works with httpx.AsyncClient only"
        raise SecurityError(msg)

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """Handshake when needed, then send ``request`` with its MAC and check the answer.

        The session is renewed before the lifetime the agent announced runs out, so the
        agent never has to refuse a request for an expired session. An answer without a
        response MAC may come from anyone on the path, so a request is never resent because
        of it, except an idempotent one (GET, HEAD, OPTIONS), once, when the agent says it
        lost the session (it restarted, say): resending a POST could run it twice.
        """
        # Overriding async_auth_flow skips httpx's own reading of bodies: do it here.
        await request.aread()
        for attempt in range(2):
            if self._session_needed():
                async with self._lock:
                    if self._session_needed():
                        flow = self._handshake(request)
                        response: httpx.Response | None = None
                        while True:
                            try:
                                step = await flow.asend(response)  # type: ignore[arg-type]
                            except StopAsyncIteration:
                                break
                            response = yield step
                            await response.aread()
            signed, req_mac = self._sign(request)
            response = yield signed
            await response.aread()
            if response.status_code == 401 and RESPONSE_MAC_HEADER not in response.headers:
                self._sid = None  # whoever sent it, the next request gets a new session
                if attempt == 0 and request.method in IDEMPOTENT and "API session" in response.text:
                    continue
                raise _unauthenticated_refusal(request, response)
            self._verify(response, req_mac)
            return

    def _session_needed(self) -> bool:
        """Whether a (new) handshake must come first: no session, or one about to expire."""
        return self._sid is None or time.monotonic() >= self._renew_at

    async def _handshake(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        started = time.monotonic()  # before the agent starts its clock: errs on the safe side
        lifetime = FALLBACK_SESSION_SECONDS
        mine, theirs = FrameQueueChannel.pair()
        task = asyncio.create_task(self.provider.handshake(mine, role="initiator"))
        handshake_id = ""
        agent = f"{request.url.scheme}://{request.url.netloc.decode('ascii')}"
        try:
            for path in (HELLO_PATH, FINISH_PATH):
                frame = await next_frame(theirs, task)
                if frame is None:
                    break
                headers = {HANDSHAKE_HEADER: handshake_id} if handshake_id else {}
                response = yield httpx.Request(
                    "POST",
                    request.url.copy_with(path=path, query=None),
                    content=frame,
                    headers=headers,
                )
                if path == HELLO_PATH and response.status_code in NO_ENDPOINT:
                    msg = (
                        f"agent {agent} does not have security enabled (its API has no "
                        f"handshake endpoint {HELLO_PATH}): enable security.enabled there, "
                        "or disable it here"
                    )
                    raise SecurityError(msg)
                if response.headers.get("content-type", "").startswith("application/json"):
                    msg = f"agent {agent} refused the handshake: {_error_text(response)}"
                    raise SecurityError(msg)
                handshake_id = response.headers.get(HANDSHAKE_HEADER, handshake_id)
                lifetime = _session_seconds(response, lifetime)
                await theirs.send(response.content)
            session = await task
        except HandshakeRefusedError as exc:
            # Its reason names the refusing node ("run on host-b: ..."); say which agent it is.
            msg = f"agent {agent} refused the handshake: {exc.reason}"
            raise SecurityError(msg) from exc
        finally:
            if not task.done():
                task.cancel()
        self._keys = session_keys(session)
        self._sid = handshake_id
        self._seq = 0
        self._renew_at = started + lifetime - min(MAX_SESSION_MARGIN, lifetime / 10)
        self.peer_id = session.peer_id
        self.peer_fingerprint = getattr(session, "peer_fingerprint", None)

    def _sign(self, request: httpx.Request) -> tuple[httpx.Request, bytes]:
        assert self._keys is not None  # set by the handshake
        assert self._sid is not None
        seq = self._seq
        self._seq += 1
        target = request.url.raw_path.decode("latin-1")
        mac = request_mac(self._keys[0], request.method, target, seq, request.content)
        mac_text = base64.b64encode(mac).decode()
        request.headers["authorization"] = f"{SCHEME} sid={self._sid},seq={seq},mac={mac_text}"
        return request, mac

    def _verify(self, response: httpx.Response, req_mac: bytes) -> None:
        assert self._keys is not None
        header = response.headers.get(RESPONSE_MAC_HEADER)
        if header is None:
            msg = (
                f"response from {response.url.host}:{response.url.port} is not authenticated "
                f"(HTTP {response.status_code}: {_error_text(response)})"
            )
            raise SecurityError(msg)
        expected = response_mac(self._keys[1], req_mac, response.status_code, response.content)
        if not hmac.compare_digest(base64.b64decode(header), expected):
            msg = "response MAC does not verify: the agent's answer was altered in transit"
            raise SecurityError(msg)


def _session_seconds(response: httpx.Response, default: float) -> float:
    """The API session lifetime the agent announced in ``response``, else ``default``."""
    try:
        seconds = float(response.headers.get(SESSION_SECONDS_HEADER, ""))
    except ValueError:
        return default
    return seconds if math.isfinite(seconds) and seconds > 0 else default


def _unauthenticated_refusal(request: httpx.Request, response: httpx.Response) -> SecurityError:
    """The error for a 401 without a response MAC: the request is not resent automatically."""
    agent = f"{request.url.scheme}://{request.url.netloc.decode('ascii')}"
    return SecurityError(
        f"agent {agent} answered {request.method} {request.url.path} with an unauthenticated "
        f"HTTP 401 ({_error_text(response)}); the request was not resent, because it may have "
        "run already (anyone on the network path can forge such an answer): check whether it "
        "took effect before you retry it; the next request starts a new API session"
    )


def _error_text(response: httpx.Response) -> str:
    try:
        return str(json.loads(response.content).get("error", response.text))
    except (ValueError, AttributeError):
        return response.text[:200]
