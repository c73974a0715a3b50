"""Read and drive a guest's serial console exposed by QEMU as a unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from pathlib import Path

from novacron_libvirt.testing.guest import HEARTBEAT_PREFIX
from novacron_sdk.errors import DriverError

_HEARTBEAT_RE = re.compile(rf"{HEARTBEAT_PREFIX} (\d+)")


class SerialConsole:
    """A connection to a guest's serial port: everything it prints is kept in ``output``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.output = ""
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._pump())

    @classmethod
    async def connect(cls, path: Path, timeout_s: float = 20.0) -> SerialConsole:
        """Connect to the console socket, waiting for QEMU to create it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(str(path))
            except OSError as exc:
                if loop.time() > deadline:
                    msg = f"serial console {path} did not accept a connection: {exc}"
                    raise DriverError(msg) from exc
                await asyncio.sleep(0.05)
            else:
                return cls(reader, writer)

    async def _pump(self) -> None:
        while chunk := await self._reader.read(65536):
            self.output += chunk.decode(errors="replace")
            self._changed.set()

    async def wait_for(
        self, pattern: str, timeout_s: float = 30.0, start: int = 0
    ) -> re.Match[str]:
        """Wait until ``pattern`` (a regex) appears in the output after offset ``start``."""
        regex = re.compile(pattern)
        async with asyncio.timeout(timeout_s):
            while True:
                match = regex.search(self.output, start)
                if match:
                    return match
                if self._task.done():
                    msg = f"serial console closed before {pattern!r} appeared"
                    raise DriverError(msg)
                self._changed.clear()
                await self._changed.wait()

    def last_heartbeat(self) -> int:
        """The highest heartbeat number seen so far (0 for none)."""
        beats = [int(n) for n in _HEARTBEAT_RE.findall(self.output)]
        return max(beats, default=0)

    async def next_heartbeat(self, after: int, timeout_s: float = 30.0) -> int:
        """Wait for a heartbeat numbered above ``after``; return the highest seen."""
        async with asyncio.timeout(timeout_s):
            while (beat := self.last_heartbeat()) <= after:
                if self._task.done():
                    msg = f"serial console closed while waiting for heartbeat {after + 1}"
                    raise DriverError(msg)
                self._changed.clear()
                await self._changed.wait()
        return beat

    async def run(self, command: str, timeout_s: float = 30.0) -> str:
        """Run a shell command in the guest; return what it printed (heartbeats removed)."""
        tag = secrets.token_hex(4)
        start = len(self.output)
        # $((...)) makes the markers the shell prints differ from the echoed command line
        # (which the console may also wrap at 80 columns).
        line = f"echo BEGIN-{tag}-$((6*7)); {command}; echo END-{tag}-$((6*7))\n"
        self._writer.write(line.encode())
        await self._writer.drain()
        end = await self.wait_for(rf"END-{tag}-42", timeout_s, start)
        begin = await self.wait_for(rf"BEGIN-{tag}-42\r?\n", timeout_s, start)
        text = self.output[begin.end() : end.start()]
        lines = [
            line
            for line in text.replace("\r", "").splitlines()
            if not line.startswith(HEARTBEAT_PREFIX)
        ]
        return "\n".join(lines)

    async def close(self) -> None:
        """Disconnect (the guest keeps running)."""
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
