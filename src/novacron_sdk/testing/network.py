"""A loopback-only guard for tests: a connection or name lookup for another host fails.

Tests and benchmarks of this project send traffic only to 127.0.0.1 (and to test hosts in
network namespaces they create). The guard is a ``sys`` audit hook, installed once per
process; audit hooks cannot be removed, so it checks a counter that :func:`loopback_only`
raises only while the guarded code runs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
_state = {"depth": 0, "installed": 0}


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _state["depth"]:
        return
    host: object = None
    if event in ("socket.connect", "socket.sendto") and isinstance(args[1], tuple):
        host = args[1][0]
    elif event == "socket.getaddrinfo":
        host = args[0]
    if isinstance(host, bytes):
        host = host.decode()
    if host is not None and host not in LOOPBACK:
        msg = f"test tried to reach {host!r}: tests may only talk to 127.0.0.1"
        raise RuntimeError(msg)


@contextmanager
def loopback_only() -> Iterator[None]:
    """While inside, any connect/sendto/getaddrinfo for a non-loopback host raises."""
    if not _state["installed"]:
        sys.addaudithook(_audit)
        _state["installed"] = 1
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
