"""A local HTTP fake of a provider's REST API, served on 127.0.0.1 in a background thread.

Cloud plugins test their real SDK clients against such fakes. This base runs the server and
offers the fault-injection helpers every fake shares; a plugin supplies the request handler
and a state object with ``lock``, ``faults``, ``operation_failures`` and ``requests``.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar


class FakeState(Protocol):
    """What the shared helpers need of a fake's state (read-only: any dataclass fits)."""

    @property
    def lock(self) -> AbstractContextManager[Any]:
        """Guards the state between the server thread and the test."""

    @property
    def faults(self) -> list[Any]:
        """Faults waiting for a matching request."""

    @property
    def operation_failures(self) -> list[dict[str, str]]:
        """Errors the next long-running operations end with."""

    @property
    def requests(self) -> list[tuple[str, str]]:
        """Every request seen, as (method, path)."""


S = TypeVar("S", bound=FakeState)


class MatchableFault(Protocol):
    """A queued fault: answers the next ``count`` requests whose method and path match."""

    method: str
    path_contains: str
    count: int


F = TypeVar("F", bound=MatchableFault)


def take_fault(faults: list[F], method: str, path: str) -> F | None:
    """The first fault matching ``method`` and ``path``, used once (dropped when spent).

    Call it with the fake's lock held: it mutates ``faults``.
    """
    for fault in faults:
        if fault.method in ("*", method) and fault.path_contains in path:
            fault.count -= 1
            if fault.count <= 0:
                faults.remove(fault)
            return fault
    return None


class LocalHttpFake(Generic[S]):
    """Serves ``handler`` on a free loopback port; use it as a context manager."""

    def __init__(self, state: S, handler: type[BaseHTTPRequestHandler]) -> None:
        self.state = state
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def inject(self, fault: Any) -> None:
        """Queue ``fault`` for the next matching requests."""
        with self.state.lock:
            self.state.faults.append(fault)

    def fail_next_operation(self, code: str, message: str) -> None:
        """Make the next long-running operation end failed with this error."""
        with self.state.lock:
            self.state.operation_failures.append({"code": code, "message": message})

    def count(self, method: str, path_contains: str) -> int:
        """How many requests with ``method`` had ``path_contains`` in their path."""
        with self.state.lock:
            return sum(1 for m, p in self.state.requests if m == method and path_contains in p)
