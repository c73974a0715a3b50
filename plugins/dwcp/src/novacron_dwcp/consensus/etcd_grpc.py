"""etcd client over gRPC with aetcd's asyncio stubs, one channel per member.

Calls go to one member at a time and move on to the next one when a call fails with
UNAVAILABLE (a member down, or cut off from the quorum: each call carries etcd's
``hasleader`` metadata, so such a member refuses at once) or DEADLINE_EXCEEDED (a hung
member accepts connections but never answers). The store retries reads on the next member;
a transaction whose outcome is unknown stays an error. A single channel listing every member
(gRPC's pick_first) would stay on a hung member forever, since its connection never breaks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import grpc  # type: ignore[import-untyped, unused-ignore]
from aetcd import rpc  # type: ignore[import-untyped, unused-ignore]  # no type hints shipped

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

_METADATA = (("hasleader", "true"),)
_TARGETS = {
    "value": rpc.Compare.VALUE,
    "version": rpc.Compare.VERSION,
    "mod_revision": rpc.Compare.MOD,
    "create_revision": rpc.Compare.CREATE,
}
_RESULTS = {
    "==": rpc.Compare.EQUAL,
    "!=": rpc.Compare.NOT_EQUAL,
    ">": rpc.Compare.GREATER,
    "<": rpc.Compare.LESS,
}
_OPTIONS = (
    # Pings find a silently dead (or hung) member under a call, a watch above all: a ping
    # every 10 s (etcd refuses pings more often than every 5 s, and pings without a call),
    # unanswered for 5 s, closes the connection. gRPC 1.5x+ times a ping out after
    # ping_timeout_ms (60 s by default) whatever keepalive_timeout_ms says (seen with its
    # http2_ping trace), and by default allows only two pings while the client sends no data
    # (max_pings_without_data), which is all an idle watch does.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.ping_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
)


def grpc_target(endpoints: Sequence[str]) -> str:
    """One gRPC target naming the endpoints: ``ipv4:h1:p1,h2:p2`` (or ``dns:`` for one name).

    :class:`GrpcClient` calls it with one endpoint per channel.
    """
    hosts = []
    for endpoint in endpoints:
        parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        if parts.scheme not in ("http", "https"):
            msg = f"etcd endpoint {endpoint!r}: use an http:// or https:// URL"
            raise StateStoreError(msg)
        hosts.append((parts.hostname or "127.0.0.1", parts.port or 2379))
    if all(h.replace(".", "").isdigit() for h, _ in hosts):
        return "ipv4:" + ",".join(f"{h}:{p}" for h, p in hosts)
    if len(hosts) == 1:
        return f"dns:{hosts[0][0]}:{hosts[0][1]}"
    msg = "several etcd endpoints must be IPv4 addresses for the gRPC client (or use one name)"
    raise StateStoreError(msg)


class _Member:
    """The channel and stubs of one member."""

    def __init__(self, endpoint: str, tls: EtcdTls | None) -> None:
        self.endpoint = endpoint
        self.target = grpc_target([endpoint])
        if tls is None:
            self.channel = rpc.insecure_channel(self.target, options=_OPTIONS)
        else:
            ca, key, cert = tls.pem()
            credentials = grpc.ssl_channel_credentials(
                root_certificates=ca, private_key=key, certificate_chain=cert
            )
            # The certificate is checked against the endpoint's host, as over https.
            host = urlsplit(endpoint).hostname or "127.0.0.1"
            options = (*_OPTIONS, ("grpc.default_authority", host))
            self.channel = rpc.secure_channel(self.target, credentials, options=options)
        self.kv = rpc.KVStub(self.channel)
        self.lease = rpc.LeaseStub(self.channel)
        self.watcher = rpc.WatchStub(self.channel)
        self.auth = rpc.AuthStub(self.channel)


def _kv(raw: Any) -> KeyValue:
    return KeyValue(
        key=raw.key.decode(),
        value=raw.value,
        create_revision=raw.create_revision,
        mod_revision=raw.mod_revision,
        version=raw.version,
        lease=raw.lease or None,
    )


def _range_request(key: str, prefix: bool) -> Any:
    raw = key.encode()
    if prefix:
        return rpc.RangeRequest(key=raw, range_end=prefix_end(raw))
    return rpc.RangeRequest(key=raw)


def _compare(cmp: Compare) -> Any:
    message = rpc.Compare(
        key=cmp.key.encode(), target=_TARGETS[cmp.target], result=_RESULTS[cmp.op]
    )
    try:
        setattr(message, cmp.target, cmp.value)
    except TypeError as exc:
        msg = f"compare on {cmp.target} of {cmp.key!r} has a value of the wrong type"
        raise StateStoreError(msg) from exc
    return message


def _op(op: Op) -> Any:
    if op.kind == "put":
        return rpc.RequestOp(
            request_put=rpc.PutRequest(key=op.key.encode(), value=op.value, lease=op.lease or 0)
        )
    raw = op.key.encode()
    end = prefix_end(raw) if op.prefix else b""
    if op.kind == "delete":
        return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=raw, range_end=end))
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=raw, range_end=end))


_ROTATE_ON = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def _translate(exc: Any, what: str) -> Exception:
    code = exc.code()
    detail = f"{what}: {exc.details()}"
    if code == grpc.StatusCode.UNAVAILABLE:
        return unavailable(detail)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return TimeoutError(detail)
    if code == grpc.StatusCode.CANCELLED:
        return EtcdUnavailableError(detail, applied_unknown=True)
    return StateStoreError(f"etcd refused {detail}")


class _InvalidTokenError(EtcdUnavailableError):
    """etcd no longer takes the client's token (refused before anything applied)."""


# A watch authenticates (when it must) within this time; the store retries after it.
_WATCH_AUTH_TIMEOUT_S = 5.0


class GrpcClient:
    """An :class:`~novacron_dwcp.consensus.etcd_common.EtcdClient` on aetcd's gRPC stubs."""

    def __init__(
        self,
        endpoints: Sequence[str],
        tls: EtcdTls | None = None,
        auth: EtcdAuth | None = None,
    ) -> None:
        if not endpoints:
            msg = "the gRPC etcd client needs at least one endpoint"
            raise StateStoreError(msg)
        # Validates every endpoint first (plain http; several members as IPv4 addresses).
        grpc_target(endpoints)
        self.members = [_Member(e, tls) for e in endpoints]
        self._current = 0
        self.token = AuthToken(auth, self._authenticate)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        token = self.token.value
        return _METADATA if token is None else (*_METADATA, ("token", token))

    async def _authenticate(self, auth: EtcdAuth, timeout_s: float) -> str:
        index, member = self._pick()
        request = rpc.AuthenticateRequest(name=auth.username, password=auth.password)
        try:
            response = await member.auth.Authenticate(
                request, timeout=timeout_s, metadata=_METADATA
            )
        except grpc.aio.AioRpcError as exc:
            raise self._failed(index, exc, "authenticate") from exc
        return str(response.token)

    def _pick(self) -> tuple[int, _Member]:
        return self._current, self.members[self._current]

    def _failed(self, index: int, exc: Any, what: str) -> Exception:
        """The error to raise for ``exc``; moves on from member ``index`` when it may be the
        member's fault (unless a concurrent call already moved on)."""
        member = self.members[index]
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            failed = tls_failure(str(exc.details()), member.endpoint)
            if failed is not None:
                return failed
        refused = auth_failure(str(exc.details()), self.token.auth, f"{what} at {member.endpoint}")
        if refused is not None:
            return refused
        if INVALID_TOKEN in str(exc.details()):
            return _InvalidTokenError(f"{what}: {exc.details()}", applied_unknown=False)
        if exc.code() in _ROTATE_ON and self._current == index:
            self._current = (index + 1) % len(self.members)
        return _translate(exc, f"{what} at {member.target}")

    async def _unary(
        self, method: Callable[[_Member], Any], request: Any, timeout_s: float, what: str
    ) -> Any:
        """One call; with a user, once more with a new token when etcd says the token
        expired (simple tokens do after 5 minutes without use)."""
        token = await self.token.ensure(timeout_s)
        try:
            return await self._unary_once(method, request, timeout_s, what)
        except _InvalidTokenError:
            await self.token.ensure(timeout_s, stale=token)
            return await self._unary_once(method, request, timeout_s, what)

    async def _unary_once(
        self, method: Callable[[_Member], Any], request: Any, timeout_s: float, what: str
    ) -> Any:
        index, member = self._pick()
        try:
            # Not wait_for_ready: a member that cannot be reached fails at once (UNAVAILABLE)
            # and the next attempt goes to the next member.
            return await method(member)(request, timeout=timeout_s, metadata=self._metadata())
        except grpc.aio.AioRpcError as exc:
            raise self._failed(index, exc, what) from exc

    async def range(self, key: str, *, prefix: bool, timeout_s: float) -> list[KeyValue]:
        """The key, or every key under the prefix, sorted by key."""
        response = await self._unary(
            lambda m: m.kv.Range, _range_request(key, prefix), timeout_s, "range"
        )
        return [_kv(kv) for kv in response.kvs]

    async def put(self, key: str, value: bytes, lease: int | None, *, timeout_s: float) -> int:
        """Write; the new revision."""
        request = rpc.PutRequest(key=key.encode(), value=value, lease=lease or 0)
        response = await self._unary(lambda m: m.kv.Put, request, timeout_s, f"put {key!r}")
        return int(response.header.revision)

    async def delete(self, key: str, *, prefix: bool, timeout_s: float) -> int:
        """Delete; how many keys went."""
        raw = key.encode()
        request = rpc.DeleteRangeRequest(key=raw, range_end=prefix_end(raw) if prefix else b"")
        response = await self._unary(
            lambda m: m.kv.DeleteRange, request, timeout_s, f"delete {key!r}"
        )
        return int(response.deleted)

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op],
        *,
        timeout_s: float,
    ) -> TxnResult:
        """etcd's Txn."""
        request = rpc.TxnRequest(
            compare=[_compare(c) for c in compare],
            success=[_op(o) for o in success],
            failure=[_op(o) for o in failure],
        )
        response = await self._unary(lambda m: m.kv.Txn, request, timeout_s, "txn")
        return TxnResult(
            succeeded=response.succeeded,
            revision=response.header.revision,
            responses=tuple(
                tuple(_kv(kv) for kv in r.response_range.kvs)
                if r.HasField("response_range")
                else ()
                for r in response.responses
            ),
        )

    async def grant(self, ttl_s: int, *, timeout_s: float) -> int:
        """A new lease id."""
        request = rpc.LeaseGrantRequest(TTL=ttl_s)
        response = await self._unary(
            lambda m: m.lease.LeaseGrant, request, timeout_s, "lease grant"
        )
        if response.error:
            msg = f"etcd refused a lease of {ttl_s} s: {response.error}"
            raise StateStoreError(msg)
        return int(response.ID)

    async def keepalive(self, lease: int, *, timeout_s: float) -> int:
        """Refresh over a short-lived keep-alive stream; the remaining ttl."""
        token = await self.token.ensure(timeout_s)
        index, member = self._pick()
        call = member.lease.LeaseKeepAlive(
            iter([rpc.LeaseKeepAliveRequest(ID=lease)]),
            timeout=timeout_s,
            metadata=self._metadata(),
        )
        try:
            async for response in call:
                return int(response.TTL)
        except grpc.aio.AioRpcError as exc:
            failed = self._failed(index, exc, f"lease keep-alive {lease}")
            if isinstance(failed, _InvalidTokenError):
                self.token.forget(token)  # the store's next attempt authenticates again
            raise failed from exc
        finally:
            call.cancel()
        raise EtcdUnavailableError("lease keep-alive stream closed early", applied_unknown=False)

    async def revoke(self, lease: int, *, timeout_s: float) -> None:
        """Revoke; StateStoreError when the lease does not exist."""
        request = rpc.LeaseRevokeRequest(ID=lease)
        await self._unary(
            lambda m: m.lease.LeaseRevoke, request, timeout_s, f"revoke lease {lease}"
        )

    async def current_revision(self, *, timeout_s: float) -> int:
        """The store revision now (a range that matches nothing)."""
        request = rpc.RangeRequest(key=b"\0", count_only=True)
        response = await self._unary(lambda m: m.kv.Range, request, timeout_s, "range")
        return int(response.header.revision)

    async def watch(
        self, key: str, *, prefix: bool, start_revision: int | None
    ) -> AsyncIterator[list[WatchEvent]]:
        """Batches of events on one watch stream."""
        raw = key.encode()
        create = rpc.WatchCreateRequest(
            key=raw,
            range_end=prefix_end(raw) if prefix else b"",
            start_revision=start_revision or 0,
        )
        token = await self.token.ensure(_WATCH_AUTH_TIMEOUT_S)
        index, member = self._pick()
        call = member.watcher.Watch(
            iter([rpc.WatchRequest(create_request=create)]),
            metadata=self._metadata(),
        )
        try:
            async for response in call:
                if response.compact_revision and response.canceled:
                    msg = (
                        f"watch on {key!r}: revisions up to {response.compact_revision} were "
                        "compacted; start again from a newer revision"
                    )
                    raise StateStoreError(msg)
                if response.canceled:
                    reason = str(response.cancel_reason)
                    refused = auth_failure(reason, self.token.auth, f"watch on {key!r}")
                    if refused is not None:
                        raise refused
                    if INVALID_TOKEN in reason:
                        self.token.forget(token)
                    elif self._current == index:
                        self._current = (index + 1) % len(self.members)
                    raise unavailable(f"watch on {key!r} canceled: {reason}")
                yield [
                    WatchEvent(
                        kind="delete" if event.type == rpc.Event.DELETE else "put",
                        key=event.kv.key.decode(),
                        value=event.kv.value,
                        revision=event.kv.mod_revision,
                    )
                    for event in response.events
                ]
        except grpc.aio.AioRpcError as exc:
            failed = self._failed(index, exc, f"watch on {key!r}")
            if isinstance(failed, _InvalidTokenError):
                self.token.forget(token)
            raise failed from exc
        finally:
            call.cancel()
        raise EtcdUnavailableError(f"watch on {key!r} ended", applied_unknown=False)

    async def close(self) -> None:
        """Close the channels."""
        for member in self.members:
            await member.channel.close()
