"""What the two etcd clients (gRPC via aetcd, JSON gateway via httpx) share: their protocol
and the failures the store retries."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from novacron_sdk.consensus.interface import Compare, KeyValue, Op, TxnResult, WatchEvent
from novacron_sdk.errors import StateStoreError

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
