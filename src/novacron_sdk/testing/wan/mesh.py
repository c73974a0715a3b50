"""N network namespaces (regions) joined pairwise by user-space emulated WAN links.

Region *i* (of at most 16) lives in its own namespace with address ``198.18.1.<i+1>``. Every
pair of regions has its own emulated link: a point-to-point TUN device in each of the two
namespaces (``ip addr add <own> peer <other>``, which is also the only route to the other),
and one forwarder process per direction applying that direction's :class:`LinkProfile`,
exactly as the two-host :class:`~novacron_sdk.testing.wan.emulator.WanEmulator` does. So
every pair sees its configured delay, rate and loss, and the links do not share capacity
(a full mesh of dedicated lines, not one uplink per region).

Each forwarder also polls a cut switch: :meth:`WanMesh.partition` cuts every link of a
region (all its packets are dropped, including those in flight), :meth:`WanMesh.heal`
restores them. Both return once every forwarder concerned has applied the change.
"""

from __future__ import annotations

import itertools
import json
import mmap
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from novacron_sdk.testing.wan.counters import BUCKET_S, CONTROL, CONTROL_HALF, STATS_SIZE
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
    spawn_forwarder,
    stop_process,
    unavailable_reason,
    wait_forwarders,
)

MESH_NETWORK = "198.18.1"
"""Region i gets ``198.18.1.<i+1>`` (RFC 2544 benchmarking range, apart from WanEmulator's)."""
MAX_REGIONS = 16
Pair = tuple[str, str]


class _Direction:
    """One direction of one link: its forwarder, stats file and cut switch."""

    def __init__(self, stats: Path, control: Path) -> None:
        self.stats = stats
        self.control_path = control
        with control.open("r+b") as handle:
            self.control = mmap.mmap(handle.fileno(), CONTROL.size)
        self.generation = 0
        self.forwarder: subprocess.Popen[bytes] | None = None

    def request(self, cut: bool) -> int:
        """Ask the forwarder to cut (or restore) the link; the generation to wait for."""
        self.generation += 1
        CONTROL_HALF.pack_into(self.control, 0, self.generation, int(cut))
        return self.generation

    def applied(self) -> int:
        """The last generation the forwarder applied."""
        return int(CONTROL_HALF.unpack_from(self.control, CONTROL_HALF.size)[0])

    def dropped_cut(self) -> int:
        """Packets the forwarder dropped while the link was cut."""
        return int(CONTROL_HALF.unpack_from(self.control, CONTROL_HALF.size)[1])

    def close(self) -> None:
        """Unmap and delete both files."""
        self.control.close()
        self.stats.unlink(missing_ok=True)
        self.control_path.unlink(missing_ok=True)


class WanMesh(NamespacedHosts):
    """Context manager: regions ``names`` in their own namespaces, pairwise emulated links.

    ``profile`` shapes every direction of every link; ``links`` overrides it per direction,
    keyed ``(src, dst)``. ``python``/``popen``/``run`` start things inside a region.
    """

    bucket_s = BUCKET_S

    def __init__(
        self,
        names: Sequence[str] = ("r0", "r1", "r2"),
        profile: LinkProfile | None = None,
        *,
        links: Mapping[Pair, LinkProfile] | None = None,
        mtu: int = 1500,
        seed: int | None = None,
    ) -> None:
        if not 2 <= len(names) <= MAX_REGIONS or len(set(names)) != len(names):
            msg = f"a WAN mesh needs 2 to {MAX_REGIONS} distinct region names, got {names!r}"
            raise WanEmulatorError(msg)
        self.names = list(names)
        default = profile or LinkProfile()
        pairs = itertools.permutations(self.names, 2)
        self.profiles: dict[Pair, LinkProfile] = dict.fromkeys(pairs, default)
        for pair, override in (links or {}).items():
            if pair not in self.profiles:
                msg = f"link {pair!r} joins no two regions of {self.names!r}"
                raise WanEmulatorError(msg)
            self.profiles[pair] = override
        super().__init__()
        self.mtu = mtu
        self.seed = seed
        token = secrets.token_hex(3)
        self._index = {name: i for i, name in enumerate(self.names)}
        self.namespaces = {
            n: f"{PREFIX}-{os.getpid()}-{token}-r{i}" for n, i in self._index.items()
        }
        self._devices = {
            (a, b): f"{PREFIX}{token}{self._index[a]:x}{self._index[b]:x}" for a, b in self.profiles
        }
        self._directions: dict[Pair, _Direction] = {}
        self.cut_pairs: set[Pair] = set()
        """Directions currently cut."""

    def address(self, name: str) -> str:
        """The IPv4 address of region ``name``."""
        return f"{MESH_NETWORK}.{self._index[name] + 1}"

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Create namespaces, TUN devices and forwarders; everything is undone on failure."""
        reason = unavailable_reason()
        if reason is not None:
            raise WanEmulatorError(reason)
        cleanup_stale()
        fds: dict[Pair, int] = {}
        try:
            for name in self.names:
                self._add_namespace(self.namespaces[name])
            for pair in self.profiles:
                fds[pair] = _open_tun(self._devices[pair])
                self._configure_device(*pair)
            for src, dst in self.profiles:
                self._spawn_forwarder(src, dst, fds[src, dst], fds[dst, src])
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        finally:
            for fd in fds.values():
                os.close(fd)  # the forwarders hold their own copies

    def _configure_device(self, here: str, there: str) -> None:
        """The device in ``here``'s namespace that carries its traffic to ``there``."""
        ns, dev = self.namespaces[here], self._devices[here, there]
        _ip("link", "set", "dev", dev, "netns", ns)
        own, peer = self.address(here), self.address(there)
        _ip("-n", ns, "addr", "add", own, "peer", f"{peer}/32", "dev", dev)
        _ip("-n", ns, "link", "set", dev, "mtu", str(self.mtu), "txqueuelen", "10000", "up")

    def _spawn_forwarder(self, src: str, dst: str, in_fd: int, out_fd: int) -> None:
        files = []
        for kind, size in (("stats", STATS_SIZE), ("control", CONTROL.size)):
            handle, name = tempfile.mkstemp(prefix=f"{PREFIX}-{kind}-")
            os.write(handle, b"\0" * size)
            os.close(handle)
            files.append(Path(name))
        direction = _Direction(*files)
        self._directions[src, dst] = direction
        seed = None if self.seed is None else self.seed + len(self._directions)
        direction.forwarder = spawn_forwarder(
            in_fd,
            out_fd,
            self.address(dst),
            self.profiles[src, dst],
            direction.stats,
            control=direction.control_path,
            seed=seed,
        )

    def _wait_ready(self, timeout: float = 30.0) -> None:
        forwarders = []
        for (src, dst), direction in self._directions.items():
            assert direction.forwarder is not None
            forwarders.append((f"{src} -> {dst}", direction.forwarder, direction.stats))
        wait_forwarders(forwarders, timeout)

    def stop(self) -> None:
        """Stop everything started in the regions, the forwarders, and delete it all."""
        self._kill_inside()
        self._stop_forwarders()
        for ns in self.namespaces.values():
            _ip_run("netns", "del", ns)
        # A device not yet moved into a namespace would outlive it: delete it by name.
        for dev in self._devices.values():
            _ip_run("link", "del", dev)
        for direction in self._directions.values():
            direction.close()
        self._directions.clear()
        self.cut_pairs.clear()

    def _stop_forwarders(self) -> None:
        for direction in self._directions.values():
            if direction.forwarder is not None:
                stop_process(direction.forwarder)

    # -- partitions ---------------------------------------------------------------------------

    def cut(self, a: str, b: str, *, cut: bool = True, timeout: float = 5.0) -> None:
        """Cut (``cut=False``: restore) both directions between regions ``a`` and ``b``."""
        self._switch([(a, b), (b, a)], cut=cut, timeout=timeout)

    def partition(self, name: str, *, timeout: float = 5.0) -> None:
        """Cut region ``name`` off from every other region: all its packets are dropped."""
        pairs = [p for p in self.profiles if name in p]
        self._switch(pairs, cut=True, timeout=timeout)

    def heal(self, name: str | None = None, *, timeout: float = 5.0) -> None:
        """Restore every link of region ``name`` (None: every cut link)."""
        pairs = [p for p in self.cut_pairs if name is None or name in p]
        self._switch(pairs, cut=False, timeout=timeout)

    def _switch(self, pairs: Sequence[Pair], *, cut: bool, timeout: float) -> None:
        for pair in pairs:
            if pair not in self._directions:
                msg = f"no link {pair[0]} -> {pair[1]} in this (started) mesh"
                raise WanEmulatorError(msg)
        wanted = {pair: self._directions[pair].request(cut) for pair in pairs}
        deadline = time.monotonic() + timeout
        for pair, generation in wanted.items():
            while self._directions[pair].applied() < generation:
                if time.monotonic() > deadline:
                    msg = f"WAN forwarder {pair[0]} -> {pair[1]} did not apply the cut switch"
                    raise WanEmulatorError(msg)
                time.sleep(0.005)
            if cut:
                self.cut_pairs.add(pair)
            else:
                self.cut_pairs.discard(pair)

    # -- measurements -------------------------------------------------------------------------

    def stats(self, src: str, dst: str) -> DirectionStats:
        """Counters of the direction ``src -> dst``, as of ~50 ms ago."""
        return read_stats(self._directions[src, dst].stats)

    def dropped_by_cut(self, src: str, dst: str) -> int:
        """Packets ``src -> dst`` dropped because the link was cut, as of ~50 ms ago."""
        return self._directions[src, dst].dropped_cut()

    def udp_rtts(
        self,
        src: str,
        dst: str,
        *,
        count: int = 20,
        interval_s: float = 0.02,
        wait_s: float = 1.0,
        port: int = 7007,
    ) -> tuple[int, list[float]]:
        """Probes sent and round-trip times (s) of UDP echoes from ``src`` to ``dst``,
        measured with real sockets in both namespaces; lost probes have no RTT."""
        module = "novacron_sdk.testing.wan.udpprobe"
        target = ["--host", self.address(dst), "--port", str(port)]
        echo = self.python(dst, "-m", module, "echo", *target, stdout=subprocess.PIPE, text=True)
        try:
            assert echo.stdout is not None
            ready = echo.stdout.readline()
            if not ready.startswith("READY"):
                msg = f"UDP echo in {dst} did not start: {ready!r}"
                raise WanEmulatorError(msg)
            argv = [
                sys.executable,
                "-m",
                module,
                "probe",
                *target,
                *("--count", str(count), "--interval", str(interval_s), "--wait", str(wait_s)),
            ]
            proc = self.run(src, argv, capture_output=True, text=True, timeout=60 + wait_s)
        finally:
            echo.kill()
            echo.communicate(timeout=5)
        if proc.returncode != 0:
            msg = f"UDP probe from {src} to {dst} failed: {proc.stderr.strip()}"
            raise WanEmulatorError(msg)
        result = json.loads(proc.stdout)
        return int(result["sent"]), [float(x) for x in result["rtts"]]
