"""Regression tests for the review of the azure driver (long-running operations, create,
sizes, Retry-After), against the real ComputeManagementClient and the local FakeArm."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from novacron_azure.driver import AzureDriver
from novacron_azure.testing import FakeArm, Fault
from novacron_sdk.errors import DriverError, InvalidStateError, QuotaExceededError
from novacron_sdk.models import VM, VMSpec, VMState
from novacron_sdk.testing.waiting import eventually


def _pollers() -> list[threading.Thread]:
    """azure-core's polling threads (one per long-running operation still followed)."""
    return [t for t in threading.enumerate() if t.name.startswith("LROPoller(")]


async def _release_operations(arm: FakeArm) -> None:
    """Let every pending operation of the fake finish, and wait for the poller threads to
    stop (one still polling when the fake closes would fail in whichever test runs next).
    """
    with arm.state.lock:
        arm.state.polls_per_operation = 0
        for op in arm.state.operations.values():
            op.polls_left = 0
    await eventually(lambda: not _pollers(), "the operations' poller threads stop")


# -- 4: a wait that times out is an error, not a silent success ------------------------------
async def test_destroy_that_outlives_wait_timeout_raises(
    arm: FakeArm, make_driver: Callable[..., AzureDriver]
) -> None:
    """Fault: the fake's delete operation never finishes (polls_per_operation is huge)."""
    # Created with the default wait: the 1 s limit is for the delete only.
    vm = await make_driver().create_vm(VMSpec(name="slowdelete"))
    driver = make_driver(wait_timeout=1)
    arm.state.polls_per_operation = 10**9
    try:
        with pytest.raises(DriverError, match="still running after 1s") as caught:
            await driver.destroy(vm.id)
        assert caught.value.code == "OperationTimeout"
    finally:
        await _release_operations(arm)


async def test_power_action_that_outlives_wait_timeout_raises(
    arm: FakeArm, make_driver: Callable[..., AzureDriver]
) -> None:
    """Fault: the fake's deallocate operation never finishes (polls_per_operation is huge)."""
    # Created with the default wait: the 1 s limit is for the deallocate only.
    vm = await make_driver().create_vm(VMSpec(name="slowstop"))
    driver = make_driver(wait_timeout=1)
    arm.state.polls_per_operation = 10**9
    try:
        with pytest.raises(DriverError, match="still running") as caught:
            await driver.stop(vm.id)
        assert caught.value.code == "OperationTimeout"
    finally:
        await _release_operations(arm)


# -- 7: create_vm refuses an existing name (the PUT is an upsert) ---------------------------
async def test_create_with_an_existing_name_is_refused(arm: FakeArm, driver: AzureDriver) -> None:
    """No fault: a second create_vm with the same name must not update the first VM."""
    first = await driver.create_vm(VMSpec(name="web", tags={"owner": "alice"}))
    with pytest.raises(InvalidStateError, match="already exists") as caught:
        await driver.create_vm(VMSpec(name="web", tags={"owner": "bob"}))
    assert caught.value.code == "VMAlreadyExists"
    assert (await driver.get_vm(first.id)).tags == {"owner": "alice"}
    assert len(await driver.list_vms()) == 1


async def test_create_retried_after_a_lost_put_response_succeeds(
    arm: FakeArm, driver: AzureDriver
) -> None:
    """Fault: the fake carries out the PUT, then answers 503 ServerBusy (a lost response)."""
    arm.inject(
        Fault(
            503, "ServerBusy", "lost", method="PUT", path_contains="/virtualMachines/", after=True
        )
    )
    vm = await driver.create_vm(VMSpec(name="retried", tags={"k": "v"}))
    assert vm.state == VMState.RUNNING
    assert arm.count("PUT", "/virtualMachines/retried") == 2
    assert [v.name for v in await driver.list_vms()] == ["retried"]


async def test_two_creates_racing_for_one_name_do_not_both_succeed(
    arm: FakeArm, make_driver: Callable[..., AzureDriver], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No fault in the fake; the race is forced: both creates are held after their existence
    check (a real GET, both 404) until both have checked, then send their real PUTs. The
    check and the PUT are separate requests, so without ``If-None-Match: *`` on the PUT the
    second create updated the first one's VM and both reported success."""
    checked = asyncio.Event()
    waiting = 0
    find = AzureDriver._find

    async def find_then_wait(self: AzureDriver, group: str, name: str) -> dict[str, Any] | None:
        nonlocal waiting
        found = await find(self, group, name)
        waiting += 1
        if waiting == 2:
            checked.set()
        await asyncio.wait_for(checked.wait(), 20)
        return found

    monkeypatch.setattr(AzureDriver, "_find", find_then_wait)
    alice, bob = make_driver(), make_driver()
    results = await asyncio.gather(
        alice.create_vm(VMSpec(name="web", tags={"owner": "alice"})),
        bob.create_vm(VMSpec(name="web", tags={"owner": "bob"})),
        return_exceptions=True,
    )
    monkeypatch.undo()
    created = [r for r in results if isinstance(r, VM)]
    refused = [r for r in results if isinstance(r, InvalidStateError)]
    assert len(created) == 1, results
    assert len(refused) == 1, results
    assert refused[0].code == "VMAlreadyExists"
    assert "already exists" in str(refused[0])
    (vm,) = await make_driver().list_vms()
    assert vm.tags == created[0].tags  # the winner's VM, not updated by the loser
    assert vm.tags in ({"owner": "alice"}, {"owner": "bob"})  # the create token is not shown


# -- 6: a failed create does not leave its VM behind silently -------------------------------
async def test_failed_create_deletes_the_vm_it_left(arm: FakeArm, driver: AzureDriver) -> None:
    """Fault: the fake's create operation ends Failed with AllocationFailed."""
    arm.fail_next_operation("AllocationFailed", "Allocation failed. No capacity.")
    with pytest.raises(QuotaExceededError, match="AllocationFailed") as caught:
        await driver.create_vm(VMSpec(name="nocap"))
    assert "left behind was deleted" in str(caught.value)
    assert caught.value.code == "AllocationFailed"
    assert await driver.list_vms() == []


async def test_failed_create_names_the_vm_it_could_not_delete(
    arm: FakeArm, driver: AzureDriver
) -> None:
    """Faults: the create operation ends Failed (AllocationFailed), then the clean-up DELETE
    is answered 409 Conflict."""
    arm.fail_next_operation("AllocationFailed", "Allocation failed. No capacity.")
    arm.inject(Fault(409, "Conflict", "busy", method="DELETE", path_contains="/nocap2"))
    with pytest.raises(QuotaExceededError) as caught:
        await driver.create_vm(VMSpec(name="nocap2"))
    text = str(caught.value)
    assert "left VM /subscriptions/" in text
    assert "novacron vm destroy /subscriptions/" in text
    assert [v.name for v in await driver.list_vms()] == ["nocap2"]


# -- 8: a transient failure does not cache "unknown" sizes -----------------------------------
async def test_throttled_size_lookup_is_asked_again(
    arm: FakeArm, make_driver: Callable[..., AzureDriver]
) -> None:
    """Fault: the fake answers 503 ServerBusy to both attempts of the first vmSizes list."""
    driver = make_driver(retry={"attempts": 2, "base_delay": 0}, wait=False)
    arm.inject(Fault(503, "ServerBusy", "busy", method="GET", path_contains="/vmSizes", count=2))
    vm = await driver.create_vm(VMSpec(name="sized", size="Standard_B2s"))
    assert (vm.vcpus, vm.memory_mib) == (0, 0)
    (listed,) = await driver.list_vms()
    assert (listed.vcpus, listed.memory_mib) == (2, 4096)


# -- 5: Retry-After is honoured ---------------------------------------------------------------
async def test_retry_after_is_honoured(arm: FakeArm, driver: AzureDriver) -> None:
    """Fault: the fake answers 429 TooManyRequests with Retry-After: 1 to one VM list."""
    await driver.create_vm(VMSpec(name="ra"))
    arm.inject(
        Fault(
            429,
            "TooManyRequests",
            "slow down",
            method="GET",
            path_contains="/virtualMachines",
            retry_after="1",
        )
    )
    started = time.monotonic()
    assert [vm.name for vm in await driver.list_vms()] == ["ra"]
    assert time.monotonic() - started >= 1.0


def test_parse_retry_after_reads_seconds_and_http_dates() -> None:
    """No fault: the header parser alone (delay-seconds, an HTTP date, garbage)."""
    from novacron_sdk.clouds.retry import parse_retry_after

    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


async def test_retry_async_waits_at_least_retry_after_capped() -> None:
    """Fault: a call that fails twice with a transient error asking for 10 s, then 900 s."""
    from novacron_sdk.clouds.retry import (
        MAX_RETRY_AFTER,
        RetryPolicy,
        retry_async,
    )

    asked = iter([10.0, 900.0])
    waits: list[float] = []
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise TimeoutError("busy")
        return "ok"

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    result = await retry_async(
        call,
        policy=RetryPolicy(attempts=3, base_delay=0.5, max_delay=1),
        retryable=lambda exc: True,
        sleep=sleep,
        retry_after=lambda exc: next(asked),
    )
    assert result == "ok"
    assert waits == [10.0, MAX_RETRY_AFTER]
