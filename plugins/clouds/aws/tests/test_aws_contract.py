"""The aws driver passes the SDK's compute contract against moto, in-process and as a server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from moto import mock_aws

from novacron_aws.driver import AwsDriver
from novacron_sdk.models import VMSpec
from novacron_sdk.testing.compute import ComputeDriverContract

# Listing all of moto's ~1,200 instance types takes seconds; two show the mapping.
INSTANCE_TYPES = ["t3.micro", "m5.large"]


class AwsContract(ComputeDriverContract):
    """What both moto set-ups share."""

    @pytest.fixture
    def invalid_vm_spec(self) -> tuple[VMSpec, str]:
        return VMSpec(name="contract-bad-extra", extra={"no_such_option": 1}), "extra"


class TestAwsInProcessContract(AwsContract):
    """moto patched into botocore in this process."""

    @pytest.fixture
    async def driver(self, aws_env: None, aws_settings: dict[str, Any]) -> AsyncIterator[AwsDriver]:
        with mock_aws():
            driver = AwsDriver({**aws_settings, "instance_types": INSTANCE_TYPES})
            yield driver
            await driver.close()


class TestAwsServerContract(AwsContract):
    """moto as a real HTTP server on 127.0.0.1, reached through ``endpoint_url``."""

    @pytest.fixture
    async def driver(self, moto_url: str, aws_settings: dict[str, Any]) -> AsyncIterator[AwsDriver]:
        driver = AwsDriver(
            {
                **aws_settings,
                "instance_types": INSTANCE_TYPES,
                "endpoint_url": moto_url,
                "access_key_id": "testing",
                "secret_access_key": "testing",
            }
        )
        yield driver
        await driver.close()
