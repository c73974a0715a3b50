"""Agents as local processes on loopback: for the demo, tests and benchmarks.

Each :class:`LocalAgent` is a real ``novacron agent`` process with its own port, so several of
them on one machine act as separate hosts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from novacron_sdk.errors import NovaCronError

START_TIMEOUT_S = 30.0


class LocalAgent:
    """Starts ``python -m novacron_sdk agent`` on 127.0.0.1 and waits until it serves."""

    def __init__(
        self,
        name: str,
        *,
        settings: Sequence[str] = (),
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.name = name
        self.settings = list(settings)
        self.env = env
        self.host = host
        self.port = port
        self.url = ""
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix=f"novacron-agent-{name}-")
        self.log_path = Path(self._dir.name) / "agent.log"

    def start(self) -> LocalAgent:
        """Spawn the process and wait for its ready file."""
        ready = Path(self._dir.name) / "ready.json"
        cmd = [sys.executable, "-m", "novacron_sdk"]
        for item in self.settings:
            cmd += ["--set", item]
        cmd += [
            "agent",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--name",
            self.name,
            "--ready-file",
            str(ready),
        ]
        env = dict(os.environ if self.env is None else self.env)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready.exists():
            if self.process.poll() is not None:
                msg = f"agent {self.name} exited with {self.process.returncode}: {self.log_tail()}"
                raise NovaCronError(msg)
            if time.monotonic() > deadline:
                self.kill()
                msg = (
                    f"agent {self.name} did not start within {START_TIMEOUT_S:.0f}s: "
                    f"{self.log_tail()}"
                )
                raise NovaCronError(msg)
            time.sleep(0.05)
        time.sleep(0.01)
        self.url = str(json.loads(ready.read_text())["url"])
        return self

    def log_tail(self, lines: int = 20) -> str:
        """The end of the agent's output."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return proc.returncode

    def kill(self) -> None:
        """SIGKILL now (a crashed host)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> LocalAgent:
        try:
            return self.start()
        except BaseException:
            self._dir.cleanup()  # __exit__ does not run when __enter__ fails
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._dir.cleanup()
