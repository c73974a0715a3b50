"""The gcp driver passes the SDK's compute contract against the fake Compute Engine API."""

from __future__ import annotations

import pytest

from novacron_sdk.models import VMSpec
from novacron_sdk.testing.compute import ComputeDriverContract


class TestGcpContract(ComputeDriverContract):
    """The real InstancesClient (REST, anonymous) pointed at the fake through client_options.

    The ``driver`` fixture comes from conftest.py.
    """

    @pytest.fixture
    def invalid_vm_spec(self) -> tuple[VMSpec, str]:
        return VMSpec(name="contract-bad-type", size="n9-gigantic"), "machineType"
