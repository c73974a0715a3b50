"""The azure driver passes the SDK's compute contract against the fake ARM API."""

from __future__ import annotations

import pytest

from novacron_sdk.models import VMSpec
from novacron_sdk.testing.compute import ComputeDriverContract


class TestAzureContract(ComputeDriverContract):
    """The real ComputeManagementClient, routed to the fake by its transport.

    The ``driver`` fixture comes from conftest.py.
    """

    @pytest.fixture
    def invalid_vm_spec(self) -> tuple[VMSpec, str]:
        return VMSpec(name="contract-bad-size", size="Standard_Nope"), "size"
