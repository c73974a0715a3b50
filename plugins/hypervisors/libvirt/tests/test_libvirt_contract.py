"""The SDK's compute driver contract, run against libvirt's test driver (test:///default)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

pytest.importorskip(
    "libvirt", reason="libvirt-python is not installed (pip install libvirt-python)"
)

from novacron_libvirt.driver import LibvirtDriver
from novacron_sdk.models import VMSpec
from novacron_sdk.testing.compute import ComputeDriverContract


class TestLibvirtTestDriverContract(ComputeDriverContract):
    """Every compute driver must pass the SDK's contract suite; libvirt's test driver runs it."""

    @pytest.fixture
    async def driver(self) -> AsyncIterator[LibvirtDriver]:
        driver = LibvirtDriver({"uri": "test:///default", "shutdown_timeout_s": 5})
        try:
            yield driver
        finally:
            await driver.close()

    @pytest.fixture
    def invalid_vm_spec(self) -> tuple[VMSpec, str]:
        return VMSpec(name="contract-bad-image", image="no-such-volume"), "image"
