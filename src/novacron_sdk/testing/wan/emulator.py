"""Two network namespaces joined by a user-space emulated WAN link (mahimahi-style, on TUN).

Host ``a`` (198.18.0.1) and host ``b`` (198.18.0.2) each live in their own namespace with a
TUN device as their only interface besides loopback. The emulator holds the other end of
both TUN devices: one forwarder process per direction applies that direction's
:class:`LinkProfile`. Nothing can reach any other address: the namespaces have no other
route, and the forwarders drop every packet not addressed to the other host.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from novacron_sdk.errors import NovaCronError
from novacron_sdk.testing.wan.counters import BUCKET_S, COUNTERS, STATS_SIZE
from novacron_sdk.testing.wan.link import LinkProfile

Host = Literal["a", "b"]
ADDRESSES: dict[str, str] = {"a": "198.18.0.1", "b": "198.18.0.2"}
"""From the benchmarking range 198.18.0.0/15 (RFC 2544), never routed on the internet."""
PREFIX = "ncwan"
_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000


class WanEmulatorError(NovaCronError):
    """The emulator could not be set up (not root, no TUN, iproute2 missing, ...)."""


@cache
def unavailable_reason() -> str | None:
    """Why the emulator cannot run here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "the WAN emulator needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the WAN emulator needs root (network namespaces and TUN devices)"
    if shutil.which("ip") is None:
        return "the WAN emulator needs `ip` from iproute2 (apt-get install iproute2)"
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
    except OSError as exc:
        return f"the WAN emulator needs /dev/net/tun: {exc}"
    os.close(fd)
    return None


def skip_unless_available() -> None:
    """In a test: skip with the reason when the emulator cannot run on this machine."""
    import pytest

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


def _ip_run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run iproute2's ``ip`` (resolved to its full path) without raising."""
    ip = shutil.which("ip") or "/usr/sbin/ip"
    # Fixed program, arguments built from our own generated names and addresses.
    return subprocess.run([ip, *args], capture_output=True, text=True, check=False)  # noqa: S603


def _ip(*args: str) -> None:
    proc = _ip_run(*args)
    if proc.returncode != 0:
        msg = f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}"
        raise WanEmulatorError(msg)


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH22x", name.encode(), _IFF_TUN | _IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def cleanup_stale() -> list[str]:
    """Delete namespaces left by emulators whose process died; returns their names."""
    proc = _ip_run("netns", "list")
    removed = []
    for line in proc.stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        parts = name.split("-")
        if len(parts) == 4 and parts[0] == PREFIX and parts[1].isdigit():
            pid = int(parts[1])
            if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
                _ip_run("netns", "del", name)
                removed.append(name)
    return removed


@dataclass(frozen=True)
class DirectionStats:
    """Counters of one direction of the emulated link."""

    packets_in: int
    bytes_in: int
    packets_out: int
    bytes_out: int
    dropped_loss: int
    dropped_queue: int
    dropped_foreign: int
    cpu_s: float
    buckets: tuple[int, ...]
    """Bytes delivered per BUCKET_S interval since the emulator started."""

    @property
    def loss_rate(self) -> float:
        """Fraction of forwarded-to-link packets dropped by random loss."""
        considered = self.packets_in - self.dropped_foreign
        return self.dropped_loss / considered if considered else 0.0


def read_stats(path: Path) -> DirectionStats:
    """The counters a forwarder publishes in its stats file."""
    raw = path.read_bytes()
    values = COUNTERS.unpack_from(raw)
    count = values[7]
    buckets = struct.unpack_from(f"={count}Q", raw, COUNTERS.size)
    (packets_in, bytes_in, packets_out, bytes_out, loss, queue, foreign) = values[:7]
    return DirectionStats(
        packets_in=packets_in,
        bytes_in=bytes_in,
        packets_out=packets_out,
        bytes_out=bytes_out,
        dropped_loss=loss,
        dropped_queue=queue,
        dropped_foreign=foreign,
        cpu_s=values[8] / 1e9,
        buckets=buckets,
    )


class WanEmulator:
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
        self.profiles: dict[str, LinkProfile] = {"a": up, "b": down or up}
        self.mtu = mtu
        self.seed = seed
        token = secrets.token_hex(3)
        self.namespaces: dict[str, str] = {h: f"{PREFIX}-{os.getpid()}-{token}-{h}" for h in "ab"}
        self._devices = {h: f"{PREFIX}{token}{h}" for h in "ab"}
        self._forwarders: dict[str, subprocess.Popen[bytes]] = {}
        self._stats_files: dict[str, Path] = {}
        self._children: list[subprocess.Popen[Any]] = []
        self.started_at = 0.0

    def address(self, host: Host) -> str:
        """The IPv4 address of ``host``."""
        return ADDRESSES[host]

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> WanEmulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Create namespaces, TUN devices and forwarders; everything is undone on failure."""
        reason = unavailable_reason()
        if reason is not None:
            raise WanEmulatorError(reason)
        cleanup_stale()
        fds: dict[str, int] = {}
        try:
            for host in "ab":
                _ip("netns", "add", self.namespaces[host])
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
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "addr", "add", f"{ADDRESSES[host]}/24", "dev", dev)
        _ip("-n", ns, "link", "set", dev, "mtu", str(self.mtu), "txqueuelen", "10000", "up")
        # Same TCP buffer limits as the host, so baselines inside are comparable to outside.
        settings = ["net.ipv6.conf.all.disable_ipv6=1"]
        for key in ("tcp_rmem", "tcp_wmem"):
            value = Path(f"/proc/sys/net/ipv4/{key}").read_text().split()
            settings.append(f"net.ipv4.{key}={' '.join(value)}")
        _ip_run("netns", "exec", ns, "sysctl", "-q", "-w", *settings)

    def _spawn_forwarder(self, src: str, dst: str, fds: dict[str, int]) -> None:
        handle, name = tempfile.mkstemp(prefix=f"{PREFIX}-stats-")
        os.write(handle, b"\0" * STATS_SIZE)
        os.close(handle)
        self._stats_files[src] = Path(name)
        profile = asdict(self.profiles[src])
        if profile["trace"] is not None:
            trace = self.profiles[src].trace
            assert trace is not None
            profile["trace"] = {
                "steps": trace.steps,
                "period_s": trace.period_s,
                "name": trace.name,
            }
        self._forwarders[src] = subprocess.Popen(  # noqa: S603 -- our own module, fixed args
            [
                sys.executable,
                "-m",
                "novacron_sdk.testing.wan.forwarder",
                "--in-fd",
                str(fds[src]),
                "--out-fd",
                str(fds[dst]),
                "--dst",
                ADDRESSES[dst],
                "--profile",
                json.dumps(profile),
                "--stats",
                name,
                *(["--seed", str(self.seed + ord(src))] if self.seed is not None else []),
            ],
            pass_fds=(fds[src], fds[dst]),
        )

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        for src, forwarder in self._forwarders.items():
            while COUNTERS.unpack_from(self._stats_files[src].read_bytes())[8] == 0:
                if forwarder.poll() is not None or time.monotonic() > deadline:
                    msg = f"WAN forwarder {src} did not start (exit code {forwarder.poll()})"
                    raise WanEmulatorError(msg)
                time.sleep(0.01)

    def stop(self) -> None:
        """Stop everything started in the namespaces, the forwarders, and delete it all."""
        for child in self._children:
            if child.poll() is None:
                child.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(5)
        for ns in self.namespaces.values():
            proc = _ip_run("netns", "pids", ns)
            for pid in proc.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
        for forwarder in self._forwarders.values():
            if forwarder.poll() is None:
                forwarder.terminate()
            try:
                forwarder.wait(5)
            except subprocess.TimeoutExpired:
                forwarder.kill()
                forwarder.wait(5)
        for ns in self.namespaces.values():
            _ip_run("netns", "del", ns)
        for path in self._stats_files.values():
            path.unlink(missing_ok=True)
        self._forwarders.clear()
        self._stats_files.clear()
        self._children.clear()

    # -- running things inside ----------------------------------------------------------------

    def command(self, host: Host, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside ``host``'s namespace."""
        return [shutil.which("ip") or "/usr/sbin/ip", "netns", "exec", self.namespaces[host], *argv]

    def run(
        self, host: Host, argv: Sequence[str], **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run a command inside ``host`` and wait for it (kwargs as for subprocess.run)."""
        return subprocess.run(self.command(host, argv), check=False, **kwargs)  # noqa: S603

    def popen(self, host: Host, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a command inside ``host``; it is killed when the emulator stops."""
        child = subprocess.Popen(self.command(host, argv), **kwargs)  # noqa: S603
        self._children.append(child)
        return child

    def python(self, host: Host, *args: str, **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``python args...`` (this interpreter) inside ``host``."""
        return self.popen(host, [sys.executable, *args], **kwargs)

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
