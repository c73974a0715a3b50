"""A minimal synchronous QMP (QEMU Machine Protocol) client over a unix socket."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any


class QmpError(RuntimeError):
    """QEMU answered a command with an error, or the connection failed."""


class QmpClient:
    """Sends QMP commands one at a time and returns their results, skipping events."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                self._sock.close()
                if time.monotonic() > deadline:
                    msg = f"QEMU's QMP socket {path} did not open within {timeout}s"
                    raise QmpError(msg) from exc
                time.sleep(0.1)
        # pmemsave of a large guest can take a while under TCG.
        self._sock.settimeout(600)
        self._buffer = b""
        self._read_message()  # the greeting
        self.execute("qmp_capabilities")

    def _read_message(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            chunk = self._sock.recv(65536)
            if not chunk:
                msg = "QEMU closed the QMP connection"
                raise QmpError(msg)
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run ``command`` and return its ``return`` value."""
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self._sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            message = self._read_message()
            if "return" in message:
                return message["return"]
            if "error" in message:
                msg = f"QMP {command} failed: {message['error']}"
                raise QmpError(msg)

    def close(self) -> None:
        """Close the connection."""
        self._sock.close()
