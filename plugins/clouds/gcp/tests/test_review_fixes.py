"""Regression tests for the review of the gcp driver (retries, timeouts, request ids, machine
type cache, Retry-After), with the real compute_v1 REST clients against the local
FakeCompute."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from novacron_gcp.driver import GcpDriver
from novacron_gcp.testing import FakeCompute, Fault
from novacron_sdk.errors import DriverError
from novacron_sdk.models import VMSpec, VMState

AGGREGATED = "/aggregated/instances"


def _operations(compute: FakeCompute, kind: str) -> int:
    with compute.state.lock:
        return sum(
            1 for op in compute.state.operations.values() if op.body["operationType"] == kind
        )


# -- 1: the client library must not retry on its own; every call has a timeout ---------------
async def test_retry_false_makes_exactly_one_request(
    compute: FakeCompute, make_driver: Callable[..., GcpDriver]
) -> None:
    """Fault: the fake answers 503 backendError to the next two aggregated lists."""
    driver = make_driver(retry=False)
    compute.inject(
        Fault(503, "backendError", "try later", method="GET", path_contains=AGGREGATED, count=2)
    )
    with pytest.raises(DriverError):
        await driver.list_vms()
    assert compute.count("GET", AGGREGATED) == 1


async def test_driver_attempts_are_not_multiplied(
    compute: FakeCompute, make_driver: Callable[..., GcpDriver]
) -> None:
    """Fault: the fake answers 503 backendError to the next two GETs of the instance."""
    driver = make_driver(retry={"attempts": 2, "base_delay": 0})
    await driver.create_vm(VMSpec(name="vm1"))
    before = compute.count("GET", "/instances/vm1")
    compute.inject(
        Fault(
            503, "backendError", "try later", method="GET", path_contains="/instances/vm1", count=2
        )
    )
    with pytest.raises(DriverError):
        await driver.get_vm("europe-west1-b/vm1")
    assert compute.count("GET", "/instances/vm1") - before == 2


async def test_a_stalled_request_times_out(
    compute: FakeCompute, make_driver: Callable[..., GcpDriver]
) -> None:
    """Fault: the fake stalls 3 s before answering the aggregated list (a hung server).

    Without the request timeout the list would succeed once the stall ends; with a retry of
    its own, the client library would get the second request answered at once. Either way
    no DriverError, and the fake would see a second request.
    """
    driver = make_driver(retry=False, request_timeout=0.5)
    compute.inject(Fault(0, "", "", method="GET", path_contains=AGGREGATED, delay=3))
    with pytest.raises(DriverError):
        await driver.list_vms()
    assert compute.count("GET", AGGREGATED) == 1


# -- 3: one request id per operation call, reused by its retries ----------------------------
async def test_create_retried_after_a_lost_response_succeeds(
    compute: FakeCompute, driver: GcpDriver
) -> None:
    """Fault: the fake creates the instance, then answers 503 (the response is lost)."""
    compute.inject(
        Fault(
            503,
            "backendError",
            "response lost",
            method="POST",
            path_contains="/instances",
            after=True,
        )
    )
    vm = await driver.create_vm(VMSpec(name="once"))
    assert vm.state == VMState.RUNNING
    assert compute.count("POST", "/zones/europe-west1-b/instances") == 2
    assert _operations(compute, "insert") == 1
    assert [v.id for v in await driver.list_vms()] == ["europe-west1-b/once"]


@pytest.mark.parametrize(
    ("method", "action", "kind"), [("DELETE", "destroy", "delete"), ("POST", "stop", "stop")]
)
async def test_actions_retried_after_a_lost_response_run_once(
    compute: FakeCompute, driver: GcpDriver, method: str, action: str, kind: str
) -> None:
    """Fault: the fake carries out the delete/stop, then answers 503 (the response is lost)."""
    vm = await driver.create_vm(VMSpec(name="act"))
    compute.inject(
        Fault(
            503,
            "backendError",
            "response lost",
            method=method,
            path_contains="/instances/act",
            after=True,
        )
    )
    await getattr(driver, action)(vm.id)
    assert compute.count(method, "/instances/act") == 2
    assert _operations(compute, kind) == 1


# -- 8: a transient failure does not cache "unknown" machine types ---------------------------
async def test_throttled_machine_type_lookup_is_asked_again(
    compute: FakeCompute, make_driver: Callable[..., GcpDriver]
) -> None:
    """Fault: the fake answers 503 backendError to both attempts of the first machine type
    get."""
    driver = make_driver(retry={"attempts": 2, "base_delay": 0}, wait=False)
    compute.inject(
        Fault(503, "backendError", "later", method="GET", path_contains="/machineTypes/", count=2)
    )
    vm = await driver.create_vm(VMSpec(name="sized", size="n2-standard-4"))
    assert (vm.vcpus, vm.memory_mib) == (0, 0)
    (listed,) = await driver.list_vms()
    assert (listed.vcpus, listed.memory_mib) == (4, 16384)


async def test_unknown_machine_type_is_remembered(
    compute: FakeCompute, make_driver: Callable[..., GcpDriver]
) -> None:
    """No fault: a 404 for a machine type is a definitive answer, asked for once."""
    from novacron_gcp.testing import MACHINE_TYPES

    driver = make_driver()
    await driver.create_vm(VMSpec(name="gone", size="e2-small"))
    MACHINE_TYPES.remove(small := next(m for m in MACHINE_TYPES if m["name"] == "e2-small"))
    before = compute.count("GET", "/machineTypes/e2-small")
    try:
        fresh = make_driver()
        await fresh.list_vms()
        await fresh.list_vms()
    finally:
        MACHINE_TYPES.insert(1, small)
    assert compute.count("GET", "/machineTypes/e2-small") - before == 1


# -- 2: dropped connections and timeouts are retried -----------------------------------------
async def test_dropped_connection_is_retried(
    compute: FakeCompute, make_driver: Callable[..., GcpDriver]
) -> None:
    """Fault: the fake closes the connection without answering the first aggregated list."""
    driver = make_driver()
    compute.inject(Fault(0, "", "", method="GET", path_contains=AGGREGATED, drop=True))
    assert await driver.list_vms() == []
    assert compute.count("GET", AGGREGATED) == 2


async def test_read_timeout_is_retried(
    compute: FakeCompute, make_driver: Callable[..., GcpDriver]
) -> None:
    """Fault: the fake stalls 4 s before answering the first aggregated list; the request
    timeout is 2 s (the retry must be answered within it, also on a loaded machine)."""
    driver = make_driver(request_timeout=2)
    compute.inject(Fault(0, "", "", method="GET", path_contains=AGGREGATED, delay=4))
    assert await driver.list_vms() == []
    assert compute.count("GET", AGGREGATED) == 2


# -- 5: Retry-After is honoured ---------------------------------------------------------------
async def test_retry_after_is_honoured(
    compute: FakeCompute, make_driver: Callable[..., GcpDriver]
) -> None:
    """Fault: the fake answers 429 rateLimitExceeded with Retry-After: 1 to one aggregated
    list."""
    driver = make_driver()
    compute.inject(
        Fault(
            429,
            "rateLimitExceeded",
            "slow down",
            method="GET",
            path_contains=AGGREGATED,
            retry_after="1",
        )
    )
    started = time.monotonic()
    assert await driver.list_vms() == []
    assert time.monotonic() - started >= 1.0
