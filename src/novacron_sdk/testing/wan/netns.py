"""What the two-host emulator and the N-region mesh share: namespaces, TUN devices, forwarder
processes and their teardown, and running commands inside a namespace."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from novacron_sdk.errors import NovaCronError
from novacron_sdk.testing.wan.counters import COUNTERS
from novacron_sdk.testing.wan.link import LinkProfile

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


def profile_json(profile: LinkProfile) -> str:
    """``profile`` as the forwarder's ``--profile`` argument."""
    data = asdict(profile)
    if profile.trace is not None:
        trace = profile.trace
        data["trace"] = {"steps": trace.steps, "period_s": trace.period_s, "name": trace.name}
    return json.dumps(data)


def spawn_forwarder(
    in_fd: int,
    out_fd: int,
    dst: str,
    profile: LinkProfile,
    stats: Path,
    *,
    control: Path | None = None,
    seed: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start one direction's forwarder: packets read from ``in_fd``, shaped, written to
    ``out_fd``; only those addressed to ``dst`` pass."""
    extra = [] if control is None else ["--control", str(control)]
    extra += [] if seed is None else ["--seed", str(seed)]
    return subprocess.Popen(  # noqa: S603 -- our own module, fixed arguments
        [
            sys.executable,
            "-m",
            "novacron_sdk.testing.wan.forwarder",
            *("--in-fd", str(in_fd), "--out-fd", str(out_fd), "--dst", dst),
            *("--profile", profile_json(profile), "--stats", str(stats)),
            *extra,
        ],
        pass_fds=(in_fd, out_fd),
    )


def wait_forwarders(
    forwarders: Iterable[tuple[str, subprocess.Popen[bytes], Path]], timeout: float
) -> None:
    """Wait until every forwarder published its first counters (it is then forwarding)."""
    deadline = time.monotonic() + timeout
    for label, forwarder, stats in forwarders:
        while COUNTERS.unpack_from(stats.read_bytes())[8] == 0:
            code = forwarder.poll()
            if code is not None or time.monotonic() > deadline:
                msg = f"WAN forwarder {label} did not start (exit code {code})"
                raise WanEmulatorError(msg)
            time.sleep(0.01)


def stop_process(process: subprocess.Popen[Any]) -> None:
    """Terminate ``process``, kill it if it does not exit within 5 s."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


class NamespacedHosts:
    """Base of the emulators: hosts in network namespaces, and things started inside them.

    Subclasses fill ``namespaces`` (host name -> namespace name) and implement ``start`` and
    ``stop``; everything started with :meth:`popen` is killed by :meth:`_kill_inside`.
    """

    def __init__(self) -> None:
        self.namespaces: dict[str, str] = {}
        self._children: list[subprocess.Popen[Any]] = []

    def start(self) -> None:
        """Create everything; undo it all when any step fails."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop everything and delete it all."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @staticmethod
    def _add_namespace(ns: str) -> None:
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        # Same TCP buffer limits as the host, so baselines inside are comparable to outside.
        settings = ["net.ipv6.conf.all.disable_ipv6=1"]
        for key in ("tcp_rmem", "tcp_wmem"):
            value = Path(f"/proc/sys/net/ipv4/{key}").read_text().split()
            settings.append(f"net.ipv4.{key}={' '.join(value)}")
        _ip_run("netns", "exec", ns, "sysctl", "-q", "-w", *settings)

    def _kill_inside(self) -> None:
        """Kill what :meth:`popen` started and any other process left in the namespaces."""
        for child in self._children:
            if child.poll() is None:
                child.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(5)
            for pipe in (child.stdin, child.stdout, child.stderr):
                if pipe is not None:
                    pipe.close()
        self._children.clear()
        for ns in self.namespaces.values():
            for pid in _ip_run("netns", "pids", ns).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)

    # -- running things inside ----------------------------------------------------------------

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside ``host``'s namespace."""
        return [shutil.which("ip") or "/usr/sbin/ip", "netns", "exec", self.namespaces[host], *argv]

    def run(
        self, host: str, argv: Sequence[str], **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run a command inside ``host`` and wait for it (kwargs as for subprocess.run)."""
        return subprocess.run(self.command(host, argv), check=False, **kwargs)  # noqa: S603

    def popen(self, host: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a command inside ``host``; it is killed when the emulator stops."""
        child = subprocess.Popen(self.command(host, argv), **kwargs)  # noqa: S603
        self._children.append(child)
        return child

    def python(self, host: str, *args: str, **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``python args...`` (this interpreter) inside ``host``."""
        return self.popen(host, [sys.executable, *args], **kwargs)
