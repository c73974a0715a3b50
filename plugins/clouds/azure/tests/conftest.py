"""Fixtures for the azure plugin tests: a loopback-only guard and the fake ARM API.

The network guard is an audit hook (hooks cannot be removed, so it checks a flag that an
autouse fixture raises only while this plugin's tests run): any connect or name lookup for a
host other than the loopback fails the test instead of reaching Azure.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from novacron_azure.driver import AzureDriver
from novacron_azure.testing import FakeArm, FakeArmTransport, StaticTokenCredential
from novacron_sdk.testing.network import loopback_only


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail any test that reaches a non-loopback host; hide the developer's Azure settings."""
    for name in list(os.environ):
        if name.startswith(("AZURE_", "MSI_", "IDENTITY_")):
            monkeypatch.delenv(name)
    with loopback_only():
        yield


@pytest.fixture
def arm() -> Iterator[FakeArm]:
    """A fresh fake ARM API on 127.0.0.1."""
    with FakeArm() as fake:
        yield fake


@pytest.fixture
def azure_settings(arm: FakeArm) -> dict[str, Any]:
    """Settings for the fake: no waits between polls, no retry backoff."""
    return {
        "subscription_id": arm.state.subscription,
        "resource_group": "novacron-rg",
        "location": "westeurope",
        "default_image": "Canonical:ubuntu-24_04-lts:server:latest",
        "polling_interval": 0,
        "wait_interval": 0,
        "retry": {"base_delay": 0},
    }


@pytest.fixture
async def make_driver(
    arm: FakeArm, azure_settings: dict[str, Any]
) -> AsyncIterator[Callable[..., AzureDriver]]:
    """Builds drivers whose real ComputeManagementClient talks to the fake."""
    made: list[AzureDriver] = []

    def build(**settings: Any) -> AzureDriver:
        driver = AzureDriver(
            {**azure_settings, **settings},
            credential=StaticTokenCredential(),
            transport=FakeArmTransport(arm.url),
        )
        made.append(driver)
        return driver

    yield build
    for made_driver in made:
        await made_driver.close()


@pytest.fixture
def driver(make_driver: Callable[..., AzureDriver]) -> AzureDriver:
    """A driver on the fake ARM API."""
    return make_driver()
