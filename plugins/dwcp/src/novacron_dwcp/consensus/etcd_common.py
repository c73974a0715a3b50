"""What the two etcd clients (gRPC via aetcd, JSON gateway via httpx) share: their protocol
and the failures the store retries."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from novacron_sdk.consensus.interface import Compare, KeyValue, Op, TxnResult, WatchEvent
from novacron_sdk.errors import ConfigError, StateStoreError

# etcd answers these while it cannot serve at all, before applying anything: safe to retry
# even for a transaction.
_NOT_APPLIED = (
    "no leader",
    "too many requests",
    "not capable",
    "failed to connect",
    "connection refused",
    "connect call failed",
    "all connection attempts failed",
)


class EtcdUnavailableError(StateStoreError):
    """A member could not serve a request; ``applied_unknown`` when it may have been applied."""

    def __init__(self, message: str, *, applied_unknown: bool) -> None:
        super().__init__(message)
        self.applied_unknown = applied_unknown


class EtcdOutcomeUnknownError(StateStoreError):
    """A transaction's connection broke after it was sent: it may or may not have applied.

    Read the keys it compares to find out; the SDK's ownership records carry a token for this.
    """


def unavailable(detail: str) -> EtcdUnavailableError:
    """The retryable error for ``detail``, marking whether the request may have applied."""
    text = detail.lower()
    safe = any(marker in text for marker in _NOT_APPLIED)
    return EtcdUnavailableError(f"etcd unavailable: {detail}", applied_unknown=not safe)


# What a failed TLS handshake says (OpenSSL through Python's ssl module, or gRPC's BoringSSL).
_VERIFY_FAILED = (
    "certificate_verify_failed",
    "certificate verify failed",
    "certificate signature failure",
    "unable to get local issuer",
    "self signed certificate",
    "self-signed certificate",
    "hostname mismatch",
    "verification check failed",
    "ip address mismatch",
    "peer name",
)
_HANDSHAKE_FAILED = (
    "ssl handshake failed",
    "tls handshake failed",
    # gRPC, when the member's alert (no client certificate) comes after its own handshake.
    "unwrap failed (tsi_data_corrupted)",
    "sslv3_alert",
    "sslv3 alert",
    "tlsv13 alert",
    "tlsv1 alert",
    "certificate required",
    "wrong version number",
    "[ssl:",
)


@dataclass(frozen=True)
class EtcdTls:
    """TLS to the members (``https://`` endpoints): the CA that signed their certificates
    (``ca_file``; the system's CAs when None) and a client certificate with its key for
    members started with ``--client-cert-auth`` (``cert_file``, ``key_file``), all PEM files.
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that verifies the members and presents the client certificate."""
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file is not None:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def pem(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        """The CA, key and certificate bytes (what gRPC's channel credentials take)."""

        def read(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path is not None else None

        return read(self.ca_file), read(self.key_file), read(self.cert_file)


def tls_settings(settings: dict[str, object], endpoints: Sequence[str]) -> EtcdTls | None:
    """The TLS settings of ``state.settings`` for ``endpoints``, checked: every endpoint
    ``https://`` or none, the files readable, a certificate with its key; None without TLS."""
    schemes = {urlsplit(e if "://" in e else f"http://{e}").scheme for e in endpoints}
    files = {name: settings.get(name) for name in ("ca_file", "cert_file", "key_file")}
    given = {name: value for name, value in files.items() if value is not None}
    if schemes - {"http", "https"}:
        msg = (
            f"state.settings.endpoints: {', '.join(endpoints)}: use http:// or https:// URLs "
            "of the members' client ports"
        )
        raise ConfigError(msg)
    if len(schemes) > 1:
        msg = (
            "state.settings.endpoints mixes http:// and https:// members: a cluster's client "
            "ports are all TLS or none"
        )
        raise ConfigError(msg)
    if schemes == {"http"}:
        if given:
            msg = (
                f"state.settings.{next(iter(given))} is set but the endpoints are http://: "
                "use the members' https:// client URLs"
            )
            raise ConfigError(msg)
        return None
    for name, value in given.items():
        if not isinstance(value, str) or not Path(value).is_file():
            msg = f"state.settings.{name}: {value!r} is not a readable file (a PEM file)"
            raise ConfigError(msg)
    if ("cert_file" in given) != ("key_file" in given):
        msg = (
            "state.settings.cert_file and key_file go together: the client certificate and "
            "its private key (PEM)"
        )
        raise ConfigError(msg)
    tls = EtcdTls(
        ca_file=files["ca_file"],  # type: ignore[arg-type]  # checked above: str or None
        cert_file=files["cert_file"],  # type: ignore[arg-type]
        key_file=files["key_file"],  # type: ignore[arg-type]
    )
    try:
        tls.ssl_context()
    except (ssl.SSLError, OSError, ValueError) as exc:
        msg = (
            f"state.settings: the TLS files do not load ({exc}): ca_file must hold PEM CA "
            "certificates, cert_file a PEM certificate and key_file its PEM private key"
        )
        raise ConfigError(msg) from exc
    return tls


def tls_failure(detail: str, endpoint: str) -> StateStoreError | None:
    """The error for a TLS handshake with ``endpoint`` that failed as ``detail`` says, saying
    which setting to fix; None when ``detail`` is not about TLS. Not retried: another
    attempt fails the same way."""
    text = detail.lower()
    if any(marker in text for marker in _VERIFY_FAILED):
        msg = (
            f"etcd at {endpoint}: its TLS certificate failed verification ({detail}); set "
            "state.settings.ca_file to the CA that signed the members' certificates (and use "
            "the host name or IP address the certificates name)"
        )
        return StateStoreError(msg)
    if any(marker in text for marker in _HANDSHAKE_FAILED):
        msg = (
            f"etcd at {endpoint}: the TLS handshake failed ({detail}); if the members require "
            "client certificates (--client-cert-auth), set state.settings.cert_file and "
            "key_file to a certificate signed by their --trusted-ca-file"
        )
        return StateStoreError(msg)
    return None


@dataclass(frozen=True)
class EtcdAuth:
    """etcd's user/password authentication: the clients get a token with these and send it
    with every request, and get a new one when etcd says it is no longer valid."""

    username: str
    password: str = field(repr=False)


def auth_settings(settings: dict[str, object]) -> EtcdAuth | None:
    """``username`` with ``password`` or ``password_file`` from ``state.settings``, checked;
    None when no user is set."""
    username = settings.get("username")
    password = settings.get("password")
    password_file = settings.get("password_file")
    if username is None:
        if password is not None or password_file is not None:
            msg = "state.settings.password is set without state.settings.username"
            raise ConfigError(msg)
        return None
    if not isinstance(username, str) or not username:
        msg = f"state.settings.username must be a non-empty string, got {username!r}"
        raise ConfigError(msg)
    if (password is None) == (password_file is None):
        msg = (
            f"state.settings.username {username!r} needs exactly one of password and "
            "password_file (a file holding the password, e.g. a mounted secret)"
        )
        raise ConfigError(msg)
    if password_file is not None:
        try:
            password = Path(str(password_file)).read_text().rstrip("\r\n")
        except OSError as exc:
            msg = f"state.settings.password_file: cannot read {password_file!r} ({exc})"
            raise ConfigError(msg) from exc
    if not isinstance(password, str):
        msg = "state.settings.password must be a string (quote it in YAML)"
        raise ConfigError(msg)
    return EtcdAuth(username, password)


class AuthToken:
    """A client's etcd token, shared by its concurrent calls: ``value`` (None before the first
    authentication, or without a user), made by ``authenticate(auth, timeout_s)`` when a call
    needs one, and dropped when etcd says it is no longer valid."""

    def __init__(
        self,
        auth: EtcdAuth | None,
        authenticate: Callable[[EtcdAuth, float], Awaitable[str]],
    ) -> None:
        self.auth = auth
        self.value: str | None = None
        self._authenticate = authenticate
        self._lock = asyncio.Lock()

    async def ensure(self, timeout_s: float, stale: str | None = None) -> str | None:
        """The token to send (None without a user): authenticate when there is none yet, or
        it is still ``stale`` (the one etcd just refused; concurrent callers authenticate
        once)."""
        if self.auth is None:
            return None
        async with self._lock:
            if self.value is None or self.value == stale:
                self.value = None
                self.value = await self._authenticate(self.auth, timeout_s)
            return self.value

    def forget(self, token: str | None) -> None:
        """Drop ``token`` (etcd no longer takes it) unless another one replaced it already;
        the next call authenticates again."""
        if token is not None and self.value == token:
            self.value = None


INVALID_TOKEN = "invalid auth token"  # noqa: S105 - etcd's error text, not a secret


def auth_failure(detail: str, auth: EtcdAuth | None, namespace_hint: str) -> StateStoreError | None:
    """The error for an authentication or permission refusal that ``detail`` describes,
    saying what to set or grant; None for anything else (an expired token included: the
    clients authenticate again)."""
    text = detail.lower()
    who = f"user {auth.username!r}" if auth is not None else "no user"
    if "user name is empty" in text:
        msg = (
            f"etcd requires authentication ({detail}): set state.settings.username and password "
            "(or password_file)"
        )
        return StateStoreError(msg)
    if "authentication failed" in text:
        msg = (
            f"etcd refused {who} ({detail}): check state.settings.username and password (or "
            "password_file)"
        )
        return StateStoreError(msg)
    if "permission denied" in text:
        msg = (
            f"etcd refused {who} access to {namespace_hint} ({detail}): grant the user's role "
            "readwrite on those keys (etcdctl role grant-permission ROLE --prefix=true "
            "readwrite PREFIX)"
        )
        return StateStoreError(msg)
    return None


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range end for every key starting with ``prefix`` (``\\0`` = all keys)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b"\0"
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


class EtcdClient(Protocol):
    """One connection to an etcd cluster; keys are full (namespaced) keys.

    Methods raise :class:`EtcdUnavailableError` for failures worth retrying elsewhere,
    :class:`TimeoutError` when ``timeout_s`` passed, and StateStoreError for answers.
    """

    async def range(self, key: str, *, prefix: bool, timeout_s: float) -> list[KeyValue]:
        """The key, or every key under the prefix, sorted by key."""

    async def put(self, key: str, value: bytes, lease: int | None, *, timeout_s: float) -> int:
        """Write; the new revision."""

    async def delete(self, key: str, *, prefix: bool, timeout_s: float) -> int:
        """Delete; how many keys went."""

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op],
        *,
        timeout_s: float,
    ) -> TxnResult:
        """etcd's Txn, with keys as given."""

    async def grant(self, ttl_s: int, *, timeout_s: float) -> int:
        """A new lease id."""

    async def keepalive(self, lease: int, *, timeout_s: float) -> int:
        """Refresh; the remaining ttl in seconds, 0 or less when the lease is gone."""

    async def revoke(self, lease: int, *, timeout_s: float) -> None:
        """Revoke; StateStoreError when the lease does not exist."""

    def watch(
        self, key: str, *, prefix: bool, start_revision: int | None
    ) -> AsyncIterator[list[WatchEvent]]:
        """Batches of events; the first item is an empty batch once the watch is created."""

    async def current_revision(self, *, timeout_s: float) -> int:
        """The store revision now."""

    async def close(self) -> None:
        """Close connections."""
