"""VM ownership: one record per VM naming the host that may run it, changed only by CAS.

Records are keyed by VM name, which travels with a migration. When a destination prepares,
it takes :func:`destination_fence` (which remembers the owner record it saw). At COMMIT it
calls the fence: only a caller whose compare-and-swap succeeds may resume the VM. Two
destinations racing for one VM (a retried migration, a split brain) cannot both win,
because each compares the record's ``mod_revision`` as it read it. A source that rolls
back after COMMIT was sent claims the VM for itself (:func:`source_fence`) before resuming
it. That changes the record, so any destination whose claim is still in flight loses.

Every claim writes a fresh ``token``: when the store cannot say whether a transaction
applied (a connection broken mid-flight), :func:`claim_vm` reads the record back and won
exactly if the token there is its own.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from novacron_sdk.cluster.keys import VMS_PREFIX, vm_key
from novacron_sdk.consensus.interface import Compare, KeyValue, Op, StateStore
from novacron_sdk.errors import StateStoreError

log = logging.getLogger(__name__)


class OwnerRecord(BaseModel):
    """Who owns a VM: ``host``; ``epoch`` counts ownership changes."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    vm: str
    host: str
    epoch: int = Field(ge=1)
    token: str
    changed_at: float = Field(description="Unix time of the change.")


def _parse(kv: KeyValue) -> OwnerRecord:
    try:
        return OwnerRecord.model_validate_json(kv.value)
    except ValidationError as exc:
        msg = (
            f"the ownership record at {kv.key} is unreadable; delete it and record the owner again"
        )
        raise StateStoreError(msg) from exc


def _new_record(vm: str, host: str, epoch: int) -> OwnerRecord:
    return OwnerRecord(
        vm=vm, host=host, epoch=epoch, token=uuid.uuid4().hex, changed_at=time.time()
    )


async def get_owner(store: StateStore, vm: str) -> OwnerRecord | None:
    """The VM's ownership record, or None when nobody recorded one."""
    kv = await store.get(vm_key(vm))
    return _parse(kv) if kv is not None else None


async def record_owner(store: StateStore, vm: str, host: str) -> bool:
    """Record ``host`` as the owner of a VM nobody owns yet; False if someone already does."""
    record = _new_record(vm, host, 1)
    result = await store.txn(
        [Compare(key=vm_key(vm), target="version", op="==", value=0)],
        [Op(kind="put", key=vm_key(vm), value=record.model_dump_json().encode())],
    )
    return result.succeeded


async def claim_vm(
    store: StateStore, vm: str, from_host: str, to_host: str, *, seen_token: str | None = None
) -> bool:
    """Move ownership of ``vm`` from ``from_host`` to ``to_host``; True only for the winner.

    Returns False when the VM is not owned by ``from_host`` (any more), when the record is
    no longer the one whose ``token`` was ``seen_token`` (someone claimed it since, even
    the same host), or when another claim changed the record between our read and our
    swap. A VM without a record is claimed by whoever creates it first. Raises
    StateStoreError when the store cannot be reached to decide: the caller must then treat
    the claim as lost and not resume.
    """
    key = vm_key(vm)
    kv = await store.get(key)
    if kv is None:
        compare = Compare(key=key, target="version", op="==", value=0)
        record = _new_record(vm, to_host, 1)
    else:
        current = _parse(kv)
        if current.host != from_host or seen_token not in (None, current.token):
            log.info("claim of %s by %s lost: owned by %s", vm, to_host, current.host)
            return False
        compare = Compare(key=key, target="mod_revision", op="==", value=kv.mod_revision)
        record = _new_record(vm, to_host, current.epoch + 1)
    put = Op(kind="put", key=key, value=record.model_dump_json().encode())
    try:
        result = await store.txn([compare], [put])
    except StateStoreError as exc:
        log.warning("claim of %s by %s: outcome unknown (%s); reading it back", vm, to_host, exc)
        after = await get_owner(store, vm)
        return after is not None and after.token == record.token
    return result.succeeded


async def destination_fence(
    store: StateStore, vm: str, to_host: str
) -> Callable[[], Awaitable[bool]]:
    """For a destination preparing to receive ``vm``: the claim it must win at COMMIT.

    Reads the owner record now (the source's, normally); the returned call claims the VM
    only if that very record is still in place. If anyone claimed the VM in between
    (another destination, or the source rolling back), it returns False: do not resume.
    """
    owner = await get_owner(store, vm)
    from_host = owner.host if owner is not None else ""
    seen_token = owner.token if owner is not None else None

    async def fence() -> bool:
        return await claim_vm(store, vm, from_host, to_host, seen_token=seen_token)

    return fence


def source_fence(store: StateStore, vm: str, host: str) -> Callable[[], Awaitable[bool]]:
    """For a source rolling back after COMMIT was sent: re-claim ``vm`` before resuming it.

    True means no destination won, and none can win any more; False means a destination
    owns the VM now and the source must stay paused.
    """

    async def fence() -> bool:
        return await claim_vm(store, vm, host, host)

    return fence


async def release_vm(store: StateStore, vm: str, host: str) -> bool:
    """Delete the record of a VM that ``host`` owns (the VM was destroyed); False otherwise."""
    key = vm_key(vm)
    kv = await store.get(key)
    if kv is None or _parse(kv).host != host:
        return False
    result = await store.txn(
        [Compare(key=key, target="mod_revision", op="==", value=kv.mod_revision)],
        [Op(kind="delete", key=key)],
    )
    return result.succeeded


async def list_owners(store: StateStore) -> list[OwnerRecord]:
    """Every ownership record, sorted by VM id; unreadable ones are skipped."""
    owners = []
    for kv in await store.get_prefix(VMS_PREFIX):
        try:
            owners.append(_parse(kv))
        except StateStoreError:
            log.warning("ignoring an unreadable ownership record at %s", kv.key)
    return owners
