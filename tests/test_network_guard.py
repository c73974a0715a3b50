"""The loopback-only guard that plugin test suites use."""

from __future__ import annotations

import socket

import pytest

from novacron_sdk.testing.network import loopback_only


def test_other_hosts_are_refused_inside_and_allowed_outside() -> None:
    with loopback_only():
        with pytest.raises(RuntimeError, match=r"only talk to 127\.0\.0\.1"):
            socket.getaddrinfo("example.invalid", 443)
        with pytest.raises(RuntimeError, match=r"only talk to 127\.0\.0\.1"):
            socket.create_connection(("192.0.2.1", 80), timeout=0.1)
        # loopback stays reachable: a listener on 127.0.0.1 accepts the connection
        with socket.create_server(("127.0.0.1", 0)) as server:
            port = server.getsockname()[1]
            socket.create_connection(("127.0.0.1", port), timeout=10).close()
    # Outside the block the guard is off again (checked without sending anything anywhere).
    from novacron_sdk.testing import network

    assert network._state["depth"] == 0
    network._audit("socket.getaddrinfo", ("example.invalid", 443, 0, 0, 0, 0))
