"""Regression tests for the review of the aws driver (instance type cache, a VM terminated
while create waits), against moto's server behind the plugin tests' fault proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import boto3
import pytest

from novacron_aws.driver import AwsDriver
from novacron_sdk.errors import DriverError, NotFoundError
from novacron_sdk.models import VMSpec, VMState

REGION = "us-east-1"
KEYS = {"access_key_id": "testing", "secret_access_key": "testing"}


@pytest.fixture
async def build(
    fault_proxy: Any, aws_settings: dict[str, Any]
) -> AsyncIterator[Callable[..., AwsDriver]]:
    """Builds drivers that reach moto's server through the fault proxy; closes them after."""
    made: list[AwsDriver] = []

    def make(**settings: object) -> AwsDriver:
        driver = AwsDriver({**aws_settings, **KEYS, "endpoint_url": fault_proxy.url, **settings})
        made.append(driver)
        return driver

    yield make
    for driver in made:
        await driver.close()


# -- 8: a transient failure does not cache "unknown" sizes -----------------------------------
async def test_throttled_instance_type_lookup_is_asked_again(
    fault_proxy: Any, build: Callable[..., AwsDriver]
) -> None:
    """Fault: the proxy answers 503 RequestLimitExceeded to two DescribeInstanceTypes calls
    (every attempt of the first lookup)."""
    driver = build(retry={"attempts": 2, "base_delay": 0}, wait=False)
    fault_proxy.fail_next(2, action="DescribeInstanceTypes")
    vm = await driver.create_vm(VMSpec(name="sized", size="t3.small"))
    assert (vm.vcpus, vm.memory_mib) == (0, 0)  # unknown while EC2 throttles
    (listed,) = await driver.list_vms()
    assert (listed.vcpus, listed.memory_mib) == (2, 2048)


async def test_refused_instance_type_lookup_is_remembered(
    fault_proxy: Any, build: Callable[..., AwsDriver]
) -> None:
    """Fault: the proxy answers 403 UnauthorizedOperation to one DescribeInstanceTypes call
    (a permanent refusal: it is not asked again for every listing)."""
    driver = build()
    fault_proxy.fail_next(
        1, status=403, code="UnauthorizedOperation", message="no", action="DescribeInstanceTypes"
    )
    await driver.create_vm(VMSpec(name="refused", size="t3.small"))
    rejected = fault_proxy.rejected
    (listed,) = await driver.list_vms()
    assert (listed.vcpus, listed.memory_mib) == (0, 0)
    assert fault_proxy.rejected == rejected


# -- 9: a VM terminated while create_vm waits says why ---------------------------------------
async def test_vm_terminated_while_waiting_reports_the_state_reason(
    moto_url: str, build: Callable[..., AwsDriver]
) -> None:
    """No proxy fault: the instance is terminated behind the driver's back (as a spot
    interruption or a launch failure would) while the driver waits for it to run."""
    driver = build(wait=False)
    vm = await driver.create_vm(VMSpec(name="dies"))
    ec2 = boto3.client(
        "ec2",
        region_name=REGION,
        endpoint_url=moto_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    ec2.terminate_instances(InstanceIds=[vm.id])
    with pytest.raises(DriverError) as caught:
        await driver.wait_for_state(vm.id, VMState.RUNNING, timeout=30, interval=0)
    assert not isinstance(caught.value, NotFoundError)
    assert "terminated" in str(caught.value)
    assert "shutdown" in str(caught.value).lower()  # EC2's StateReason message
    assert caught.value.code == "Client.UserInitiatedShutdown"
