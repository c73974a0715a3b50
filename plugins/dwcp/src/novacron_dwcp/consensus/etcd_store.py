"""The ``etcd`` state store: the StateStore contract on an etcd v3 cluster (3 or more members).

Settings (all optional):

- ``endpoints``: client URLs of the members, a list or a comma-separated string; default
  ``http://127.0.0.1:2379``. The client fails over between them.
- ``client``: ``grpc`` (aetcd, install ``novacron-dwcp[etcd]``), ``gateway`` (etcd's JSON
  gateway over httpx, no extra dependency) or ``auto`` (default: grpc when aetcd imports).
- ``namespace``: a prefix put in front of every key (and taken off again), so that several
  users share one cluster; default none.
- ``timeout_s`` (default 5): the most one operation may take, retries included. When no
  majority of members is up, operations fail with StateStoreError after this long.
- ``attempt_timeout_s`` (default 2): the most one attempt of a retried operation may wait. A
  request caught in a leader failure waits for etcd's own request timeout (5 s plus two
  election timeouts); giving up on it sooner and retrying keeps writes flowing.
- ``watch_reconnect_s`` (default 30): how long a watch keeps trying to resume on another
  member before it fails.
- ``ca_file``, ``cert_file``, ``key_file``: TLS, with ``https://`` endpoints: the CA that
  signed the members' certificates (default: the system's CAs), and a client certificate and
  its key for members that require one (``--client-cert-auth``); PEM files. A certificate
  that fails verification, or a handshake the member refuses, is a StateStoreError that says
  which setting to fix (not retried).
- ``username`` with ``password`` or ``password_file`` (a file holding it): etcd's user
  authentication. The client gets a token and sends it with every request, and gets a new one
  when etcd says it expired. A wrong password, a missing user and a permission etcd refuses
  are StateStoreErrors that say what to set or grant (not retried).

Retries: reads, puts, deletes and lease calls are retried (on another member) until
``timeout_s``; a put whose connection broke mid-flight may thus apply twice, with the same
value. A transaction is retried only when etcd certainly did not apply it; when it may have
(broken connection, timeout) it raises
:class:`~novacron_dwcp.consensus.etcd_common.EtcdOutcomeUnknownError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from novacron_dwcp.consensus.etcd_common import (
    EtcdAuth,
    EtcdClient,
    EtcdOutcomeUnknownError,
    EtcdTls,
    EtcdUnavailableError,
    auth_settings,
    tls_settings,
)
from novacron_sdk.config.checks import unknown_key_problem
from novacron_sdk.consensus.interface import (
    Compare,
    KeyValue,
    Op,
    StateStore,
    TxnResult,
    WatchEvent,
)
from novacron_sdk.errors import ConfigError, StateStoreError

T = TypeVar("T")
_BACKOFF_START_S = 0.05
_BACKOFF_MAX_S = 0.5


def _endpoints(value: object) -> list[str]:
    if value is None:
        return ["http://127.0.0.1:2379"]
    items = value.split(",") if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    endpoints = [str(e).strip() for e in items if str(e).strip()]
    if not endpoints:
        msg = "state.settings.endpoints is empty: list the etcd members' client URLs"
        raise ConfigError(msg)
    return endpoints


def client_kind(kind: object, endpoints: Sequence[str]) -> str:
    """``grpc`` or ``gateway``: the client that ``state.settings.client`` (``grpc``,
    ``gateway`` or ``auto``: grpc when aetcd imports) gives for ``endpoints``, checked."""
    if kind not in ("auto", "grpc", "gateway"):
        msg = f"state.settings.client is {kind!r}; use 'grpc', 'gateway' or 'auto'"
        raise ConfigError(msg)
    if kind == "gateway":
        return "gateway"
    try:
        from novacron_dwcp.consensus.etcd_grpc import grpc_target
    except ImportError as exc:
        if kind == "grpc":
            msg = f"the gRPC etcd client needs aetcd: pip install 'novacron-dwcp[etcd]' ({exc})"
            raise ConfigError(msg) from exc
        return "gateway"
    grpc_target(endpoints)  # several members must be IPv4 addresses for it
    return "grpc"


def make_client(
    kind: str,
    endpoints: Sequence[str],
    tls: EtcdTls | None = None,
    auth: EtcdAuth | None = None,
) -> EtcdClient:
    """The etcd client ``kind`` (``grpc``, ``gateway`` or ``auto``) for ``endpoints``, over
    TLS when ``tls`` is given, authenticating as ``auth``'s user when given."""
    if client_kind(kind, endpoints) == "grpc":
        from novacron_dwcp.consensus.etcd_grpc import GrpcClient

        return GrpcClient(endpoints, tls, auth)
    from novacron_dwcp.consensus.etcd_gateway import GatewayClient

    return GatewayClient(endpoints, tls, auth)


def _seconds(settings: Mapping[str, Any], key: str, default: float) -> float:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        msg = f"state.settings.{key} must be a number of seconds > 0, got {value!r}"
        raise ConfigError(msg)
    return float(value)


class EtcdStore(StateStore):
    """A :class:`~novacron_sdk.consensus.interface.StateStore` on an etcd v3 cluster."""

    name: ClassVar[str] = "etcd"

    SETTINGS: ClassVar[tuple[str, ...]] = (
        "endpoints", "client", "namespace", "timeout_s", "attempt_timeout_s",
        "watch_reconnect_s", "ca_file", "cert_file", "key_file", "username", "password",
        "password_file",
    )  # fmt: skip

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        self._read_settings()
        self.client = make_client(self.client_kind, self.endpoints, self.tls, self.auth)
        self._lease_ttl: dict[int, int] = {}

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> None:
        """Every setting checked as the store would use it, without a client or connection
        (``novacron config validate``)."""
        store = cls.__new__(cls)
        StateStore.__init__(store, settings)
        store._read_settings()

    def _read_settings(self) -> None:
        """Read and check ``self.settings``; ConfigError naming the first that cannot work."""
        problem = unknown_key_problem(self.settings, self.SETTINGS, "state.settings.")
        if problem is not None:
            raise ConfigError(f"etcd store: {problem}")
        self.endpoints = _endpoints(self.settings.get("endpoints"))
        self.namespace = str(self.settings.get("namespace", ""))
        self.timeout_s = _seconds(self.settings, "timeout_s", 5.0)
        self.attempt_timeout_s = _seconds(self.settings, "attempt_timeout_s", 2.0)
        self.watch_reconnect_s = _seconds(self.settings, "watch_reconnect_s", 30.0)
        self.tls = tls_settings(dict(self.settings), self.endpoints)
        self.auth = auth_settings(dict(self.settings))
        self.client_kind = client_kind(self.settings.get("client", "auto"), self.endpoints)

    def _full(self, key: str) -> str:
        return self.namespace + key

    def _short(self, kv: KeyValue) -> KeyValue:
        if not self.namespace:
            return kv
        return kv.model_copy(update={"key": kv.key[len(self.namespace) :]})

    def _short_event(self, event: WatchEvent) -> WatchEvent:
        if not self.namespace:
            return event
        return event.model_copy(update={"key": event.key[len(self.namespace) :]})

    async def _retry(
        self, what: str, call: Callable[[float], Awaitable[T]], *, txn: bool = False
    ) -> T:
        """Run ``call(attempt_timeout)`` until it answers, retrying failures until timeout_s."""
        deadline = time.monotonic() + self.timeout_s
        delay = _BACKOFF_START_S
        last: Exception | None = None
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                # A transaction gets one long attempt: a timed-out one may still apply.
                return await call(remaining if txn else min(remaining, self.attempt_timeout_s))
            except EtcdUnavailableError as exc:
                if txn and exc.applied_unknown:
                    raise self._unknown(what, exc) from exc
                last = exc
            except TimeoutError as exc:
                if txn:
                    raise self._unknown(what, exc) from exc
                last = exc
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, _BACKOFF_MAX_S)
        msg = (
            f"etcd {what} did not succeed within {self.timeout_s} s at {', '.join(self.endpoints)}"
            f" (last error: {last}); check that a majority of the members is up"
        )
        raise StateStoreError(msg) from last

    def _unknown(self, what: str, exc: Exception) -> EtcdOutcomeUnknownError:
        msg = (
            f"etcd {what} at {', '.join(self.endpoints)} may or may not have applied ({exc}): "
            "read its keys to find out; if this repeats, check that a majority of the members is up"
        )
        return EtcdOutcomeUnknownError(msg)

    async def get(self, key: str) -> KeyValue | None:
        """The key, or None."""
        found = await self._retry(
            "get", lambda t: self.client.range(self._full(key), prefix=False, timeout_s=t)
        )
        return self._short(found[0]) if found else None

    async def get_prefix(self, prefix: str) -> list[KeyValue]:
        """All keys under ``prefix``, sorted by key."""
        found = await self._retry(
            "get_prefix", lambda t: self.client.range(self._full(prefix), prefix=True, timeout_s=t)
        )
        return [self._short(kv) for kv in found]

    async def put(self, key: str, value: bytes, *, lease: int | None = None) -> int:
        """Write; returns the new store revision."""
        return await self._retry(
            "put", lambda t: self.client.put(self._full(key), value, lease, timeout_s=t)
        )

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        """Delete the key (or prefix); returns how many keys were deleted."""
        return await self._retry(
            "delete", lambda t: self.client.delete(self._full(key), prefix=prefix, timeout_s=t)
        )

    async def txn(
        self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        """If every compare holds apply ``success``, else ``failure``; atomically."""
        if self.namespace:
            compare = [c.model_copy(update={"key": self._full(c.key)}) for c in compare]
            success = [o.model_copy(update={"key": self._full(o.key)}) for o in success]
            failure = [o.model_copy(update={"key": self._full(o.key)}) for o in failure]
        result = await self._retry(
            "txn",
            lambda t: self.client.txn(compare, success, failure, timeout_s=t),
            txn=True,
        )
        if not self.namespace:
            return result
        return result.model_copy(
            update={
                "responses": tuple(tuple(self._short(kv) for kv in kvs) for kvs in result.responses)
            }
        )

    async def grant_lease(self, ttl_s: float) -> int:
        """A new lease id; etcd counts whole seconds, so the ttl is rounded up."""
        if not ttl_s > 0:
            msg = f"a lease ttl must be positive, got {ttl_s}"
            raise StateStoreError(msg)
        ttl = max(1, math.ceil(ttl_s))
        lease = await self._retry("lease grant", lambda t: self.client.grant(ttl, timeout_s=t))
        self._lease_ttl[lease] = ttl
        return lease

    async def refresh_lease(self, lease: int) -> None:
        """Extend the lease by its ttl; raises StateStoreError if it already expired."""
        remaining = await self._retry(
            "lease refresh", lambda t: self.client.keepalive(lease, timeout_s=t)
        )
        if remaining <= 0:
            self._lease_ttl.pop(lease, None)
            msg = f"lease {lease} has expired or was revoked; its keys are gone"
            raise StateStoreError(msg)

    async def revoke_lease(self, lease: int) -> None:
        """Expire the lease now, deleting its keys."""
        self._lease_ttl.pop(lease, None)
        await self._retry("lease revoke", lambda t: self.client.revoke(lease, timeout_s=t))

    async def revision(self) -> int:
        """The store revision now (etcd's, shared by every namespace)."""
        return await self._retry("revision", lambda t: self.client.current_revision(timeout_s=t))

    def watch(self, prefix: str, *, start_revision: int | None = None) -> AsyncIterator[WatchEvent]:
        """Changes under ``prefix`` after ``start_revision`` (default: from now), in order.

        When the member serving the watch goes away, the watch resumes on another one from
        the revision after the last event it delivered, so no event is lost or repeated.
        """
        return self._watch(prefix, start_revision)

    async def _watch(self, prefix: str, start_revision: int | None) -> AsyncIterator[WatchEvent]:
        next_revision = start_revision if start_revision is not None else await self.revision() + 1
        failing_since: float | None = None
        delay = _BACKOFF_START_S
        while True:
            stream = self.client.watch(
                self._full(prefix), prefix=True, start_revision=next_revision
            )
            try:
                async for batch in stream:
                    failing_since, delay = None, _BACKOFF_START_S
                    for event in batch:
                        next_revision = event.revision + 1
                        yield self._short_event(event)
            except EtcdUnavailableError as exc:
                now = time.monotonic()
                failing_since = failing_since if failing_since is not None else now
                if now - failing_since > self.watch_reconnect_s:
                    msg = (
                        f"watch on {prefix!r} could not resume for {self.watch_reconnect_s} s "
                        f"at {', '.join(self.endpoints)}: {exc}"
                    )
                    raise StateStoreError(msg) from exc
            finally:
                with contextlib.suppress(Exception):
                    await stream.aclose()  # type: ignore[attr-defined]  # async generators have it
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX_S)

    async def close(self) -> None:
        """Release connections."""
        await self.client.close()
