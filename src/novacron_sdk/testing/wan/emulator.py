"""Two network namespaces joined by a user-space emulated WAN link (mahimahi-style, on TUN).

Host ``a`` (198.18.0.1) and host ``b`` (198.18.0.2) each live in their own namespace with a
TUN device as their only interface besides loopback. The emulator holds the other end of
both TUN devices: one forwarder process per direction applies that direction's
:class:`LinkProfile`. Nothing can reach any other address: the namespaces have no other
route, and the forwarders drop every packet not addressed to the other host.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

from novacron_sdk.testing.wan.counters import BUCKET_S, STATS_SIZE
from novacron_sdk.testing.wan.link import LinkProfile
from novacron_sdk.testing.wan.netns import (
    PREFIX,
    DirectionStats,
    NamespacedHosts,
    WanEmulatorError,
    _ip,
    _ip_run,
    _open_tun,
    cleanup_stale,
    read_stats,
    skip_unless_available,
    spawn_forwarder,
    stop_process,
    unavailable_reason,
    wait_forwarders,
)

__all__ = [
    "ADDRESSES",
    "DirectionStats",
    "Host",
    "WanEmulator",
    "WanEmulatorError",
    "cleanup_stale",
    "read_stats",
    "skip_unless_available",
    "unavailable_reason",
]

Host = Literal["a", "b"]
ADDRESSES: dict[str, str] = {"a": "198.18.0.1", "b": "198.18.0.2"}
"""From the benchmarking range 198.18.0.0/15 (RFC 2544), never routed on the internet."""


class WanEmulator(NamespacedHosts):
    """Context manager: two namespaced hosts, ``a`` and ``b``, joined by an emulated link.

    ``up`` shapes packets from a to b, ``down`` from b to a (default: the same as ``up``).
    """

    bucket_s = BUCKET_S

    def __init__(
        self,
        up: LinkProfile,
        down: LinkProfile | None = None,
        *,
        mtu: int = 1500,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.profiles: dict[str, LinkProfile] = {"a": up, "b": down or up}
        self.mtu = mtu
        self.seed = seed
        token = secrets.token_hex(3)
        self.namespaces: dict[str, str] = {h: f"{PREFIX}-{os.getpid()}-{token}-{h}" for h in "ab"}
        self._devices = {h: f"{PREFIX}{token}{h}" for h in "ab"}
        self._forwarders: dict[str, subprocess.Popen[bytes]] = {}
        self._stats_files: dict[str, Path] = {}
        self.started_at = 0.0

    def address(self, host: Host) -> str:
        """The IPv4 address of ``host``."""
        return ADDRESSES[host]

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Create namespaces, TUN devices and forwarders; everything is undone on failure."""
        reason = unavailable_reason()
        if reason is not None:
            raise WanEmulatorError(reason)
        cleanup_stale()
        fds: dict[str, int] = {}
        try:
            for host in "ab":
                self._add_namespace(self.namespaces[host])
                fds[host] = _open_tun(self._devices[host])
                self._configure(host)
            for src, dst in (("a", "b"), ("b", "a")):
                self._spawn_forwarder(src, dst, fds)
            self._wait_ready()
            self.started_at = time.monotonic()
        except BaseException:
            self.stop()
            raise
        finally:
            for fd in fds.values():
                os.close(fd)  # the forwarders hold their own copies

    def _configure(self, host: str) -> None:
        ns, dev = self.namespaces[host], self._devices[host]
        _ip("link", "set", "dev", dev, "netns", ns)
        _ip("-n", ns, "addr", "add", f"{ADDRESSES[host]}/24", "dev", dev)
        _ip("-n", ns, "link", "set", dev, "mtu", str(self.mtu), "txqueuelen", "10000", "up")

    def _spawn_forwarder(self, src: str, dst: str, fds: dict[str, int]) -> None:
        handle, name = tempfile.mkstemp(prefix=f"{PREFIX}-stats-")
        os.write(handle, b"\0" * STATS_SIZE)
        os.close(handle)
        self._stats_files[src] = Path(name)
        seed = None if self.seed is None else self.seed + ord(src)
        self._forwarders[src] = spawn_forwarder(
            fds[src], fds[dst], ADDRESSES[dst], self.profiles[src], Path(name), seed=seed
        )

    def _wait_ready(self, timeout: float = 20.0) -> None:
        wait_forwarders(
            ((src, fwd, self._stats_files[src]) for src, fwd in self._forwarders.items()), timeout
        )

    def stop(self) -> None:
        """Stop everything started in the namespaces, the forwarders, and delete it all."""
        self._kill_inside()
        for forwarder in self._forwarders.values():
            stop_process(forwarder)
        for ns in self.namespaces.values():
            _ip_run("netns", "del", ns)
        for path in self._stats_files.values():
            path.unlink(missing_ok=True)
        self._forwarders.clear()
        self._stats_files.clear()

    # -- agents -------------------------------------------------------------------------------

    def start_agents(
        self,
        workdir: Path,
        *,
        ports: tuple[int, int] = (8470, 8471),
        timeout_s: float = 60.0,
    ) -> dict[str, str]:
        """Start a NovaCron agent on each host (migrations on the host's address); their URLs.

        Each logs to ``workdir/<host>.log``; both are stopped with the emulator. Raises
        WanEmulatorError with the end of both logs when they are not ready in ``timeout_s``.
        """
        urls = {}
        for host, port in zip(("a", "b"), ports, strict=True):
            address = ADDRESSES[host]
            with (workdir / f"{host}.log").open("wb") as log:  # the agent keeps its own copy
                self.python(
                    host, "-m", "novacron_sdk", "--set", f"agent.migration_host={address}",
                    "agent", "--host", address, "--port", str(port), "--name", f"wan-{host}",
                    "--ready-file", str(workdir / f"ready-{host}.json"),
                    stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
            urls[host] = f"http://{address}:{port}"
        deadline = time.monotonic() + timeout_s
        while not all((workdir / f"ready-{h}.json").exists() for h in urls):
            if time.monotonic() > deadline:
                logs = {h: (workdir / f"{h}.log").read_text(errors="replace")[-1500:] for h in urls}
                msg = f"the agents did not start in {timeout_s:g} s: {logs}"
                raise WanEmulatorError(msg)
            time.sleep(0.1)
        return urls

    # -- measurements -------------------------------------------------------------------------

    def stats(self, src: Host) -> DirectionStats:
        """Counters of the direction from ``src`` to the other host, as of ~50 ms ago."""
        return read_stats(self._stats_files[src])

    def tcp_goodput(
        self, src: Host, *, seconds: float, streams: int = 1, cc: str = "cubic", port: int = 5201
    ) -> tuple[float, str]:
        """Goodput in bit/s of plain TCP from ``src`` to the other host (measured at the sink),
        and the congestion control the source really used."""
        dst: Host = "b" if src == "a" else "a"
        module = "novacron_sdk.testing.wan.tcpbench"
        common = ["--host", ADDRESSES[dst], "--port", str(port), "--streams", str(streams)]
        sink = self.python(dst, "-m", module, "sink", *common, stdout=subprocess.PIPE, text=True)
        assert sink.stdout is not None
        ready = sink.stdout.readline()
        if not ready.startswith("READY"):
            msg = f"tcpbench sink did not start: {ready!r}"
            raise WanEmulatorError(msg)
        sent = self.run(
            src,
            [
                sys.executable,
                "-m",
                module,
                "source",
                *common,
                "--seconds",
                str(seconds),
                "--cc",
                cc,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        )
        result = json.loads(sink.communicate(timeout=60)[0])
        if sent.returncode != 0 or not result["seconds"]:
            msg = f"tcpbench failed: {sent.stderr}"
            raise WanEmulatorError(msg)
        return 8 * result["bytes"] / result["seconds"], json.loads(sent.stdout)["cc"]

    def ping(self, src: Host, count: int = 20, interval_s: float = 0.02) -> list[float]:
        """Round-trip times in seconds measured with ``ping`` from ``src`` to the other host."""
        dst = ADDRESSES["b" if src == "a" else "a"]
        if shutil.which("ping") is None:
            msg = "ping is not installed (apt-get install iputils-ping)"
            raise WanEmulatorError(msg)
        proc = self.run(
            src,
            ["ping", "-n", "-c", str(count), "-i", str(interval_s), "-W", "2", dst],
            capture_output=True,
            text=True,
        )
        rtts = [
            float(part.split("=")[1]) / 1000
            for line in proc.stdout.splitlines()
            for part in line.split()
            if part.startswith("time=")
        ]
        if not rtts and proc.returncode != 0:
            msg = f"ping from {src} failed: {proc.stdout}{proc.stderr}"
            raise WanEmulatorError(msg)
        return rtts
