"""Run a throw-away etcd cluster on 127.0.0.1 (tests, benchmarks, local trials).

Every member is a real ``etcd`` process with its data on ``/dev/shm`` (when it exists), free
ports and short Raft timers, so a killed leader is replaced within about a second. Members
can be killed (SIGKILL, as a crash) and restarted on their data. Usage::

    with LocalEtcdCluster(members=3) as cluster:
        store = EtcdStore({"endpoints": cluster.client_urls})

or ``python -m novacron_dwcp.consensus.local_cluster`` to run one until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from novacron_sdk.errors import StateStoreError

HEARTBEAT_MS = 50
ELECTION_MS = 500


def etcd_binary() -> str | None:
    """Path of the ``etcd`` server binary (``$NOVACRON_ETCD_BINARY`` or on PATH), or None."""
    return os.environ.get("NOVACRON_ETCD_BINARY") or shutil.which("etcd")


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class Member:
    """One etcd member: its name, ports, data directory and process (None when down)."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def client_url(self) -> str:
        """``http://127.0.0.1:<client port>``."""
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        """``http://127.0.0.1:<peer port>``."""
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.process is not None and self.process.poll() is None


class LocalEtcdCluster:
    """A local etcd cluster of ``members`` processes; a context manager that removes its data."""

    def __init__(self, members: int = 3, *, base_dir: str | Path | None = None) -> None:
        binary = etcd_binary()
        if binary is None:
            msg = "etcd is not installed: apt-get install etcd-server, or set NOVACRON_ETCD_BINARY"
            raise StateStoreError(msg)
        self.binary = binary
        shm = Path("/dev/shm")  # noqa: S108 - tmpfs: fsync is cheap, a private mkdtemp inside
        parent = Path(base_dir) if base_dir else (shm if shm.is_dir() else None)
        self.root = Path(tempfile.mkdtemp(prefix="novacron-etcd-", dir=parent))
        ports = _free_ports(2 * members)
        self.members = [
            Member(
                name=f"m{i}",
                client_port=ports[2 * i],
                peer_port=ports[2 * i + 1],
                data_dir=self.root / f"m{i}",
                log_path=self.root / f"m{i}.log",
            )
            for i in range(members)
        ]
        self.token = self.root.name

    @property
    def client_urls(self) -> list[str]:
        """Client URLs of every member (down or not), in member order."""
        return [m.client_url for m in self.members]

    def _command(self, member: Member) -> list[str]:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        return [
            self.binary,
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls={member.client_url}",
            f"--advertise-client-urls={member.client_url}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster={initial}",
            "--initial-cluster-state=new",
            f"--initial-cluster-token={self.token}",
            f"--heartbeat-interval={HEARTBEAT_MS}",
            f"--election-timeout={ELECTION_MS}",
            "--logger=zap",
            "--log-level=warn",
        ]

    def start_member(self, index: int) -> None:
        """Start (or restart, on its data) member ``index``."""
        member = self.members[index]
        if member.running:
            return
        log = member.log_path.open("ab")
        try:
            member.process = subprocess.Popen(  # noqa: S603 - our own etcd command line
                self._command(member), stdout=log, stderr=log, start_new_session=True
            )
        finally:
            log.close()

    def kill(self, index: int) -> None:
        """SIGKILL member ``index``, as a crash would, and reap it."""
        process = self.members[index].process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
        self.members[index].process = None

    def restart(self, index: int, *, timeout_s: float = 20.0) -> None:
        """Start a killed member again and wait until it serves requests."""
        self.start_member(index)
        self.wait_healthy([index], timeout_s=timeout_s)

    def leader(self) -> int | None:
        """Index of the current Raft leader among running members, or None."""
        ids: dict[str, int] = {}
        leader_id = None
        for index, member in enumerate(self.members):
            if not member.running:
                continue
            status = _post_json(f"{member.client_url}/v3/maintenance/status", {})
            if status is None:
                continue
            ids[str(status.get("header", {}).get("member_id"))] = index
            leader_id = str(status.get("leader")) if status.get("leader") else leader_id
        return ids.get(leader_id) if leader_id is not None else None

    def revoke_all_leases(self) -> int:
        """Revoke every lease in the cluster (tests: no expiry from one test bumps the next's
        revisions); returns how many were revoked."""
        url = next(m.client_url for m in self.members if m.running)
        listing = _post_json(f"{url}/v3/lease/leases", {}) or {}
        leases = [str(item["ID"]) for item in listing.get("leases", ())]
        for lease in leases:
            _post_json(f"{url}/v3/lease/revoke", {"ID": lease})
        return len(leases)

    def wait_healthy(self, indexes: list[int] | None = None, *, timeout_s: float = 20.0) -> None:
        """Wait until the given members (default: all running ones) report a healthy cluster."""
        chosen = (
            indexes if indexes is not None else [i for i, m in enumerate(self.members) if m.running]
        )
        deadline = time.monotonic() + timeout_s
        for index in chosen:
            member = self.members[index]
            while not _healthy(member.client_url):
                if not member.running:
                    msg = f"etcd member {member.name} exited: {self._tail(member)}"
                    raise StateStoreError(msg)
                if time.monotonic() > deadline:
                    msg = f"etcd member {member.name} not healthy after {timeout_s} s: " + (
                        self._tail(member)
                    )
                    raise StateStoreError(msg)
                time.sleep(0.05)

    @staticmethod
    def _tail(member: Member) -> str:
        with contextlib.suppress(OSError):
            return member.log_path.read_text(errors="replace")[-2000:]
        return "(no log)"

    def start(self) -> LocalEtcdCluster:
        """Start every member and wait for a leader."""
        for index in range(len(self.members)):
            self.start_member(index)
        self.wait_healthy()
        return self

    def stop(self) -> None:
        """Kill every member and delete the data."""
        for index in range(len(self.members)):
            self.kill(index)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalEtcdCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _post_json(url: str, body: dict[str, Any], timeout_s: float = 1.0) -> dict[str, Any] | None:
    request = urllib.request.Request(  # noqa: S310 - http URL built from our own member
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            data = json.loads(response.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _healthy(client_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{client_url}/health", timeout=1.0) as response:  # noqa: S310
            return bool(json.loads(response.read()).get("health") == "true")
    except (OSError, ValueError):
        return False


def main() -> None:
    """Run a local 3-member cluster until interrupted, printing its endpoints."""
    with LocalEtcdCluster(members=3) as cluster:
        sys.stdout.write(f"endpoints: {','.join(cluster.client_urls)}\n")
        sys.stdout.write(f"data: {cluster.root} (removed on exit); Ctrl-C to stop\n")
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            while all(m.running for m in cluster.members):
                time.sleep(0.5)


if __name__ == "__main__":
    main()
