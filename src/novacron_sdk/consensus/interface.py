"""The state-store contract, modelled on etcd's v3 API.

Every write bumps one store-wide revision. ``txn`` compares then applies one of two operation
lists atomically: this is the only way the SDK changes ownership records, so that two racing
writers cannot both win. Leases expire unless refreshed, deleting their keys. Watches deliver
every change under a prefix in revision order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class KeyValue(BaseModel):
    """A stored key with its revisions (as etcd reports them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int | None = None


class Compare(BaseModel):
    """A condition of a transaction.

    ``target`` is what to compare: ``value``, ``version`` (0 = key absent), ``mod_revision``
    or ``create_revision``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    target: Literal["value", "version", "mod_revision", "create_revision"]
    op: Literal["==", "!=", "<", ">"] = "=="
    value: bytes | int


class Op(BaseModel):
    """A put, delete or get inside a transaction."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["put", "delete", "get"]
    key: str
    value: bytes = b""
    lease: int | None = None
    prefix: bool = Field(default=False, description="delete/get: the whole prefix.")


class TxnResult(BaseModel):
    """Whether the compares held, the new revision, and what ``get`` ops read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    succeeded: bool
    revision: int
    responses: tuple[tuple[KeyValue, ...], ...] = ()


class WatchEvent(BaseModel):
    """One change seen by a watch."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["put", "delete"]
    key: str
    value: bytes = b""
    revision: int


class StateStore(ABC):
    """Async key-value store with revisions. Keys are str, values bytes."""

    name: ClassVar[str] = ""

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self.settings: dict[str, Any] = dict(settings or {})

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> None:
        """Raise ConfigError when ``settings`` cannot work, saying which one to fix, without
        touching the store (``novacron config validate`` calls it). The default makes a
        store and drops it: override it when making a store connects or opens files."""
        cls(settings)

    @abstractmethod
    async def get(self, key: str) -> KeyValue | None:
        """The key, or None."""

    @abstractmethod
    async def get_prefix(self, prefix: str) -> list[KeyValue]:
        """All keys under ``prefix``, sorted by key."""

    @abstractmethod
    async def put(self, key: str, value: bytes, *, lease: int | None = None) -> int:
        """Write; returns the new store revision."""

    @abstractmethod
    async def delete(self, key: str, *, prefix: bool = False) -> int:
        """Delete the key (or prefix); returns how many keys were deleted."""

    @abstractmethod
    async def txn(
        self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        """If every compare holds apply ``success``, else ``failure``; atomically."""

    @abstractmethod
    async def grant_lease(self, ttl_s: float) -> int:
        """A new lease id that expires ``ttl_s`` seconds from now unless refreshed."""

    @abstractmethod
    async def refresh_lease(self, lease: int) -> None:
        """Extend the lease by its ttl; raises StateStoreError if it already expired."""

    @abstractmethod
    async def revoke_lease(self, lease: int) -> None:
        """Expire the lease now, deleting its keys."""

    @abstractmethod
    def watch(self, prefix: str, *, start_revision: int | None = None) -> AsyncIterator[WatchEvent]:
        """Changes under ``prefix`` from ``start_revision`` (inclusive, like etcd; default now)."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections."""
