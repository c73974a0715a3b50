"""The DWCP multi-stream transport passes the transport contract suite, in both modes."""

from __future__ import annotations

import pytest

from novacron_dwcp.transport.multistream import MultiStreamTransport
from novacron_sdk.testing.transport import TransportContract
from novacron_sdk.transport.interface import Transport


class TestDwcpContractDefaults(TransportContract):
    """Default settings: on loopback that is datacenter mode, one stream, adaptive."""

    @pytest.fixture
    def transport(self) -> Transport:
        return MultiStreamTransport()


class TestDwcpContractStriped(TransportContract):
    """Internet mode forced, four streams, no adaptation: every frame is striped."""

    @pytest.fixture
    def transport(self) -> Transport:
        return MultiStreamTransport(
            {"mode": "internet", "initial_streams": 4, "adapt": False, "window_bytes": 1 << 20}
        )
