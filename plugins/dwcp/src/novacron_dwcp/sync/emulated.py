"""Sync regions as real processes in their own network namespaces, joined by the WAN mesh.

``EmulatedRegions`` starts a :class:`~novacron_sdk.testing.wan.WanMesh` and, in each
region's namespace, a :mod:`novacron_dwcp.sync.region_process` (its own replica, its own
HTTP endpoint on the region's address); the regions sync over the emulated links only.
A test drives each region over its stdin/stdout (:meth:`EmulatedRegions.call`) and
partitions or heals a region through the emulator. Needs what the WAN emulator needs
(root, /dev/net/tun, iproute2).
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from novacron_sdk.errors import NovaCronError
from novacron_sdk.testing.wan.link import LinkProfile
from novacron_sdk.testing.wan.mesh import WanMesh

SYNC_PORT = 8471


class RegionProcessError(NovaCronError):
    """A region process died, did not answer in time, or refused a request."""


class _Region:
    """One region process and a thread that queues the lines it prints."""

    def __init__(self, name: str, proc: subprocess.Popen[str]) -> None:
        self.name = name
        self.proc = proc
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def join(self, timeout: float) -> None:
        """Wait until the reader saw the end of the output (the process exited)."""
        self._reader.join(timeout)

    def answer(self, timeout: float) -> dict[str, Any]:
        """The next JSON line the process prints."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            msg = f"region {self.name} did not answer within {timeout} s"
            raise RegionProcessError(msg) from None
        if line is None:
            msg = f"region {self.name} exited (code {self.proc.poll()}); see its stderr"
            raise RegionProcessError(msg)
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            msg = f"region {self.name}: {answer['error']}"
            raise RegionProcessError(msg)
        return answer


class EmulatedRegions:
    """Context manager: ``names`` as sync regions over a WAN mesh with ``profile`` links."""

    def __init__(
        self,
        names: Sequence[str] = ("region-0", "region-1", "region-2"),
        profile: LinkProfile | None = None,
        *,
        interval_s: float = 1.0,
        timeout_s: float = 5.0,
    ) -> None:
        self.names = list(names)
        self.mesh = WanMesh(self.names, profile)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._regions: dict[str, _Region] = {}

    def url(self, name: str) -> str:
        """Base URL of region ``name``'s sync endpoint (reachable from the other regions)."""
        return f"http://{self.mesh.address(name)}:{SYNC_PORT}"

    def __enter__(self) -> EmulatedRegions:
        self.mesh.start()
        try:
            for name in self.names:
                self._start_region(name)
            for region in self._regions.values():
                region.answer(timeout=60)  # {"ready": url}
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _start_region(self, name: str) -> None:
        peers = [f"--peer={p}={self.url(p)}" for p in self.names if p != name]
        proc = self.mesh.python(
            name,
            "-m",
            "novacron_dwcp.sync.region_process",
            "--name",
            name,
            "--listen",
            f"{self.mesh.address(name)}:{SYNC_PORT}",
            *peers,
            "--interval",
            str(self.interval_s),
            "--timeout",
            str(self.timeout_s),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._regions[name] = _Region(name, proc)

    def close(self) -> None:
        """Let every region stop (stdin closed), then tear the mesh down."""
        for region in self._regions.values():
            if region.proc.stdin is not None and not region.proc.stdin.closed:
                region.proc.stdin.close()
        for region in self._regions.values():
            try:
                region.proc.wait(5)
            except subprocess.TimeoutExpired:
                region.proc.kill()
                region.proc.wait(5)
            region.join(5)
        self.mesh.stop()
        self._regions.clear()

    def call(self, name: str, op: str, *, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        """Send one request to region ``name`` and return its answer."""
        region = self._regions[name]
        stdin = region.proc.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps({"op": op, **fields}) + "\n")
            stdin.flush()
        except OSError as exc:
            msg = f"region {name} no longer reads requests: {exc}"
            raise RegionProcessError(msg) from exc
        return region.answer(timeout)

    def digest(self, name: str) -> dict[str, Any]:
        """Everything region ``name`` shows (see ``Replica.digest``)."""
        digest: dict[str, Any] = self.call(name, "digest")["digest"]
        return digest

    def partition(self, name: str) -> None:
        """Cut region ``name`` off from the others in the emulator (every packet dropped)."""
        self.mesh.partition(name)

    def heal(self) -> None:
        """Restore every cut link."""
        self.mesh.heal()
