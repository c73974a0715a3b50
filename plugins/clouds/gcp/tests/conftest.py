"""Fixtures for the gcp plugin tests: a loopback-only guard and the fake Compute Engine API.

The network guard is an audit hook (hooks cannot be removed, so it checks a flag that an
autouse fixture raises only while this plugin's tests run): any connect or name lookup for a
host other than the loopback fails the test instead of reaching Google.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.auth.compute_engine import _metadata as gce_metadata
from google.auth.credentials import AnonymousCredentials

from novacron_gcp.driver import GcpDriver
from novacron_gcp.testing import FakeCompute
from novacron_sdk.testing.network import loopback_only


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Fail any test that reaches a non-loopback host; hide the developer's Google settings."""
    for name in list(os.environ):
        if name.startswith(("GOOGLE_", "CLOUDSDK_", "GCE_")):
            monkeypatch.delenv(name)
    # Application default credentials must never fall through to the metadata server or
    # to the developer's gcloud configuration.
    # google-auth reads NO_GCE_CHECK once, at import, into this flag; set the flag itself.
    monkeypatch.setattr(gce_metadata, "_NO_GCE_CHECK", True)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    with loopback_only():
        yield


@pytest.fixture
def compute() -> Iterator[FakeCompute]:
    """A fresh fake Compute Engine API on 127.0.0.1."""
    with FakeCompute() as fake:
        yield fake


@pytest.fixture
def gcp_settings(compute: FakeCompute) -> dict[str, Any]:
    """Settings for the fake: its endpoint, no waits between polls, no retry backoff."""
    return {
        "project": compute.project,
        "zone": "europe-west1-b",
        "api_endpoint": compute.url,
        "wait_interval": 0,
        "retry": {"base_delay": 0},
    }


@pytest.fixture
async def make_driver(gcp_settings: dict[str, Any]) -> AsyncIterator[Callable[..., GcpDriver]]:
    """Builds drivers whose real compute_v1 REST clients talk to the fake."""
    made: list[GcpDriver] = []

    def build(**settings: Any) -> GcpDriver:
        driver = GcpDriver({**gcp_settings, **settings}, credentials=AnonymousCredentials())
        made.append(driver)
        return driver

    yield build
    for driver in made:
        await driver.close()


@pytest.fixture
def driver(make_driver: Callable[..., GcpDriver]) -> GcpDriver:
    """A driver on the fake Compute Engine API."""
    return make_driver()
