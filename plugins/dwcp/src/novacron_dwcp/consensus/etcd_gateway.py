"""etcd client over the v3 JSON gateway (``/v3/kv/range`` ...) with httpx: no extra dependency.

Keys and values travel base64-encoded and 64-bit integers as strings, as grpc-gateway maps
etcd's protobuf messages. The client sticks to the first endpoint that answers and moves to
the next one when a connection fails, when a member does not answer in time (a hung member
accepts connections but never answers) and when a member says it cannot serve. The store
retries reads on the next member; a transaction whose outcome is unknown stays an error.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

from novacron_dwcp.consensus.etcd_common import (
    INVALID_TOKEN,
    AuthToken,
    EtcdAuth,
    EtcdTls,
    EtcdUnavailableError,
    auth_failure,
    prefix_end,
    tls_failure,
    unavailable,
)
from novacron_sdk.consensus.interface import Compare, KeyValue, Op, TxnResult, WatchEvent
from novacron_sdk.errors import StateStoreError

_TARGETS = {
    "value": "VALUE",
    "version": "VERSION",
    "mod_revision": "MOD",
    "create_revision": "CREATE",
}
_RESULTS = {"==": "EQUAL", "!=": "NOT_EQUAL", ">": "GREATER", "<": "LESS"}
_GRPC_UNAVAILABLE = 14
_GRPC_DEADLINE = 4
# A quiet watch checks its member this often; a member that does not answer a new watch or a
# check in WATCH_CHECK_TIMEOUT_S is given up on (the gRPC client's pings: every 10 s, 5 s).
WATCH_IDLE_CHECK_S = 10.0
WATCH_CHECK_TIMEOUT_S = 5.0
# A member without a leader refuses at once instead of waiting out its own request timeout.
_HEADERS = {"Grpc-Metadata-hasleader": "true"}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def _kv(raw: dict[str, Any]) -> KeyValue:
    lease = int(raw.get("lease", 0))
    return KeyValue(
        key=_unb64(raw.get("key")).decode(),
        value=_unb64(raw.get("value")),
        create_revision=int(raw.get("create_revision", 0)),
        mod_revision=int(raw.get("mod_revision", 0)),
        version=int(raw.get("version", 0)),
        lease=lease or None,
    )


def _range_fields(key: str, prefix: bool) -> dict[str, str]:
    raw = key.encode()
    fields = {"key": _b64(raw)}
    if prefix:
        fields["range_end"] = _b64(prefix_end(raw))
    return fields


def _compare(cmp: Compare) -> dict[str, Any]:
    body: dict[str, Any] = {
        "key": _b64(cmp.key.encode()),
        "target": _TARGETS[cmp.target],
        "result": _RESULTS[cmp.op],
    }
    if cmp.target == "value":
        if not isinstance(cmp.value, bytes):
            msg = f"compare on value of {cmp.key!r} needs bytes, got {type(cmp.value).__name__}"
            raise StateStoreError(msg)
        body["value"] = _b64(cmp.value)
    else:
        if not isinstance(cmp.value, int):
            msg = f"compare on {cmp.target} of {cmp.key!r} needs an int"
            raise StateStoreError(msg)
        body[cmp.target] = str(cmp.value)
    return body


def _op(op: Op) -> dict[str, Any]:
    if op.kind == "put":
        put: dict[str, Any] = {"key": _b64(op.key.encode()), "value": _b64(op.value)}
        if op.lease:
            put["lease"] = str(op.lease)
        return {"request_put": put}
    if op.kind == "delete":
        return {"request_delete_range": _range_fields(op.key, op.prefix)}
    return {"request_range": _range_fields(op.key, op.prefix)}


class _InvalidTokenError(EtcdUnavailableError):
    """etcd no longer takes the client's token (refused before anything applied)."""


class GatewayClient:
    """An :class:`~novacron_dwcp.consensus.etcd_common.EtcdClient` on etcd's JSON gateway."""

    def __init__(
        self,
        endpoints: Sequence[str],
        tls: EtcdTls | None = None,
        auth: EtcdAuth | None = None,
    ) -> None:
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self._current = 0
        self._http = httpx.AsyncClient(
            headers=_HEADERS,
            limits=httpx.Limits(max_keepalive_connections=32),
            verify=tls.ssl_context() if tls is not None else True,
        )
        self.token = AuthToken(auth, self._authenticate)

    def _auth_headers(self) -> dict[str, str]:
        token = self.token.value
        return {"Authorization": token} if token is not None else {}

    async def _authenticate(self, auth: EtcdAuth, timeout_s: float) -> str:
        body = {"name": auth.username, "password": auth.password}
        data = await self._post("/v3/auth/authenticate", body, timeout_s)
        return str(data["token"])

    def _broken(
        self, index: int, url: str, exc: httpx.TransportError | ssl.SSLError
    ) -> StateStoreError:
        """The error for a request to member ``index`` that failed in transport: a TLS
        failure says which setting to fix; anything else moves on to the next member.
        (httpcore lets an ``ssl.SSLError`` raised while reading through unwrapped: the
        member's alert for a missing client certificate arrives after the TLS 1.3
        handshake.)"""
        detail = f"{exc!r}"
        cause = exc.__cause__ or exc.__context__
        if cause is not None:
            detail += f" ({cause!r})"
        failed = tls_failure(detail, self.endpoints[index])
        if failed is not None:
            return failed
        self._rotate(index)
        return unavailable(f"{url}: {detail}")

    def _rotate(self, failed: int) -> None:
        """Move on from endpoint ``failed``, unless a concurrent call already did."""
        if self._current == failed:
            self._current = (failed + 1) % len(self.endpoints)

    async def _call(self, path: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """POST to the current member; with a user, once more with a new token when etcd
        says the token expired (simple tokens do after 5 minutes without use)."""
        token = await self.token.ensure(timeout_s)
        try:
            return await self._post(path, body, timeout_s)
        except _InvalidTokenError:
            await self.token.ensure(timeout_s, stale=token)
            return await self._post(path, body, timeout_s)

    async def _post(self, path: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        index = self._current
        url = self.endpoints[index] + path
        try:
            response = await self._http.post(
                url, json=body, timeout=timeout_s, headers=self._auth_headers()
            )
        except httpx.ConnectTimeout as exc:
            self._rotate(index)
            raise unavailable(f"{url}: failed to connect in time") from exc
        except httpx.TimeoutException as exc:
            # A hung member accepts connections and never answers: try the next one.
            self._rotate(index)
            raise TimeoutError(f"etcd at {url} did not answer within {timeout_s} s") from exc
        except (httpx.TransportError, ssl.SSLError) as exc:
            raise self._broken(index, url, exc) from exc
        try:
            data = response.json()
        except ValueError as exc:
            self._rotate(index)
            raise unavailable(f"{url} answered {response.status_code} without JSON") from exc
        if response.status_code == httpx.codes.OK and isinstance(data, dict):
            return data
        return self._error(index, url, data)

    def _error(self, index: int, url: str, data: Any) -> dict[str, Any]:
        detail = data.get("error", str(data)) if isinstance(data, dict) else str(data)
        code = data.get("code") if isinstance(data, dict) else None
        if code == _GRPC_UNAVAILABLE:
            self._rotate(index)
            raise unavailable(f"{url}: {detail}")
        if code == _GRPC_DEADLINE:
            self._rotate(index)
            raise TimeoutError(f"etcd at {url}: {detail}")
        if INVALID_TOKEN in str(detail):
            raise _InvalidTokenError(f"{url}: {detail}", applied_unknown=False)
        refused = auth_failure(str(detail), self.token.auth, url)
        if refused is not None:
            raise refused
        msg = f"etcd at {url} refused the request: {detail}"
        raise StateStoreError(msg)

    async def range(self, key: str, *, prefix: bool, timeout_s: float) -> list[KeyValue]:
        """The key, or every key under the prefix, sorted by key."""
        data = await self._call("/v3/kv/range", _range_fields(key, prefix), timeout_s)
        return [_kv(kv) for kv in data.get("kvs", ())]

    async def put(self, key: str, value: bytes, lease: int | None, *, timeout_s: float) -> int:
        """Write; the new revision."""
        body: dict[str, Any] = {"key": _b64(key.encode()), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        data = await self._call("/v3/kv/put", body, timeout_s)
        return int(data["header"]["revision"])

    async def delete(self, key: str, *, prefix: bool, timeout_s: float) -> int:
        """Delete; how many keys went."""
        data = await self._call("/v3/kv/deleterange", _range_fields(key, prefix), timeout_s)
        return int(data.get("deleted", 0))

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op],
        *,
        timeout_s: float,
    ) -> TxnResult:
        """etcd's Txn."""
        body = {
            "compare": [_compare(c) for c in compare],
            "success": [_op(o) for o in success],
            "failure": [_op(o) for o in failure],
        }
        data = await self._call("/v3/kv/txn", body, timeout_s)
        responses = tuple(
            tuple(_kv(kv) for kv in r.get("response_range", {}).get("kvs", ()))
            for r in data.get("responses", ())
        )
        return TxnResult(
            succeeded=bool(data.get("succeeded", False)),
            revision=int(data["header"]["revision"]),
            responses=responses,
        )

    async def grant(self, ttl_s: int, *, timeout_s: float) -> int:
        """A new lease id."""
        data = await self._call("/v3/lease/grant", {"TTL": str(ttl_s)}, timeout_s)
        if data.get("error"):
            msg = f"etcd refused a lease of {ttl_s} s: {data['error']}"
            raise StateStoreError(msg)
        return int(data["ID"])

    async def keepalive(self, lease: int, *, timeout_s: float) -> int:
        """Refresh; the remaining ttl, 0 or less when the lease is gone."""
        data = await self._call("/v3/lease/keepalive", {"ID": str(lease)}, timeout_s)
        return int(data.get("result", {}).get("TTL", 0))

    async def revoke(self, lease: int, *, timeout_s: float) -> None:
        """Revoke; StateStoreError when the lease does not exist."""
        await self._call("/v3/lease/revoke", {"ID": str(lease)}, timeout_s)

    async def current_revision(self, *, timeout_s: float) -> int:
        """The store revision now (a range that matches nothing)."""
        data = await self._call("/v3/kv/range", {"key": _b64(b"\0"), "count_only": True}, timeout_s)
        return int(data["header"]["revision"])

    async def watch(
        self, key: str, *, prefix: bool, start_revision: int | None
    ) -> AsyncIterator[list[WatchEvent]]:
        """Batches of events, streamed as one JSON object per line.

        A hung member accepts the connection and never answers, and a quiet watch has nothing
        to say either: the watch waits at most ``WATCH_CHECK_TIMEOUT_S`` for the member's first
        answer (etcd answers a new watch at once), and while no line comes it asks the member
        for its revision every ``WATCH_IDLE_CHECK_S`` on another connection, giving up on it
        (``EtcdUnavailableError``: the store resumes elsewhere) when that goes unanswered for
        ``WATCH_CHECK_TIMEOUT_S`` — about what the gRPC client's pings take.
        """
        create: dict[str, Any] = _range_fields(key, prefix)
        if start_revision is not None:
            create["start_revision"] = str(start_revision)
        token = await self.token.ensure(WATCH_CHECK_TIMEOUT_S)
        index = self._current
        url = self.endpoints[index] + "/v3/watch"
        request = self._http.build_request(
            "POST",
            url,
            json={"create_request": create},
            timeout=httpx.Timeout(10.0, read=None),
            headers=self._auth_headers(),
        )
        try:
            try:
                response = await asyncio.wait_for(
                    self._http.send(request, stream=True), WATCH_CHECK_TIMEOUT_S
                )
            except TimeoutError:
                self._rotate(index)
                msg = f"watch on {url}: the member did not answer in {WATCH_CHECK_TIMEOUT_S} s"
                raise unavailable(msg) from None
            try:
                if response.status_code == httpx.codes.UNAUTHORIZED:
                    self.token.forget(token)  # the next attempt authenticates again
                    raise unavailable(f"watch on {url}: etcd took the token no more")
                if response.status_code != httpx.codes.OK:
                    self._rotate(index)
                    raise unavailable(f"watch on {url} answered {response.status_code}")
                async for line in self._lines(index, response):
                    if line.strip():
                        yield self._watch_batch(index, url, json.loads(line), token)
            finally:
                await response.aclose()
        except (httpx.TransportError, ssl.SSLError) as exc:
            raise self._broken(index, f"watch on {url}", exc) from exc
        self._rotate(index)
        raise EtcdUnavailableError(f"watch on {url} ended", applied_unknown=False)

    async def _lines(self, index: int, response: httpx.Response) -> AsyncIterator[str]:
        """The lines of a watch response; checks the member while none comes."""
        lines = response.aiter_lines()
        pending: asyncio.Future[str] | None = None
        try:
            while True:
                pending = asyncio.ensure_future(anext(lines))
                while not (await asyncio.wait({pending}, timeout=WATCH_IDLE_CHECK_S))[0]:
                    await self._check_member(index)
                try:
                    line = pending.result()
                except StopAsyncIteration:
                    return
                pending = None
                yield line
        finally:
            if pending is not None:
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)

    async def _check_member(self, index: int) -> None:
        """EtcdUnavailableError unless member ``index`` answers a range within the check time."""
        url = self.endpoints[index] + "/v3/kv/range"
        body = {"key": _b64(b"\0"), "count_only": True}
        try:
            response = await self._http.post(
                url, json=body, timeout=WATCH_CHECK_TIMEOUT_S, headers=self._auth_headers()
            )
        except (httpx.TransportError, ssl.SSLError) as exc:
            raise self._broken(index, f"watch check at {url}", exc) from exc
        if response.status_code == httpx.codes.UNAUTHORIZED:
            return  # it answered: alive (an expired token matters only to new requests)
        if response.status_code != httpx.codes.OK:
            self._rotate(index)
            msg = f"watch at {self.endpoints[index]}: a check answered {response.status_code}"
            raise unavailable(msg)

    def _watch_ended(
        self, index: int, what: str, detail: str, token: str | None
    ) -> StateStoreError:
        """The error for a watch that etcd ended saying ``detail``: a refused user or
        permission says what to fix; an expired token is dropped and anything else moves on
        to the next member (both retried by the store)."""
        refused = auth_failure(detail, self.token.auth, what)
        if refused is not None:
            return refused
        if INVALID_TOKEN in detail:
            self.token.forget(token)
        else:
            self._rotate(index)
        return unavailable(f"{what}: {detail}")

    def _watch_batch(
        self, index: int, url: str, message: dict[str, Any], token: str | None
    ) -> list[WatchEvent]:
        if "error" in message:
            error = message["error"]
            detail = str(error.get("message", error) if isinstance(error, dict) else error)
            raise self._watch_ended(index, f"watch on {url}", detail, token)
        result = message.get("result", {})
        if result.get("compact_revision") and result.get("canceled"):
            msg = (
                f"watch on {url}: revisions up to {result['compact_revision']} were compacted; "
                "start again from a newer revision"
            )
            raise StateStoreError(msg)
        if result.get("canceled"):
            reason = str(result.get("cancel_reason", ""))
            raise self._watch_ended(index, f"watch on {url} canceled", reason, token)
        return [
            WatchEvent(
                kind="delete" if event.get("type") == "DELETE" else "put",
                key=_unb64(event["kv"].get("key")).decode(),
                value=_unb64(event["kv"].get("value")),
                revision=int(event["kv"].get("mod_revision", 0)),
            )
            for event in result.get("events", ())
        ]

    async def close(self) -> None:
        """Close the HTTP connections."""
        await self._http.aclose()
