"""A private libvirt daemon for tests: session mode, its own directories, an unprivileged uid.

root cannot use ``qemu:///session`` directly, and the system daemon would share state with
the host. So the test starts ``libvirtd`` as an unprivileged uid (``nobody`` by default) with
``HOME`` and the ``XDG_*`` directories inside a temporary directory: it is a session daemon
whose socket, config, domains and QEMU processes all live there. Connect with
``qemu:///session?socket=<root>/run/libvirt/libvirt-sock``.

For migration between two such daemons on one machine, each gets a different ``host_uuid``
(libvirt refuses to migrate to "the same host") and may run in its own mount namespace in
which ``migration_dir`` is a bind mount of a private directory: the same unix socket path then
names a different socket for each daemon's QEMU, as it would on two hosts.

QEMU post-copy needs ``userfaultfd``; with ``vm.unprivileged_userfaultfd = 0`` (the default)
an unprivileged process may use it only with ``CAP_SYS_PTRACE``. The daemon therefore keeps
that one capability as an ambient capability (inherited by its QEMU processes); pass
``ambient_capabilities=()`` to drop it (post-copy then fails with "Postcopy is not supported").
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from novacron_sdk.errors import DriverError

NOBODY = 65534
REQUIRED_BINARIES = ("libvirtd", "qemu-system-x86_64", "setpriv", "unshare")


def missing_binaries() -> list[str]:
    """System binaries the daemon needs that are not installed."""
    return [name for name in REQUIRED_BINARIES if shutil.which(name) is None]


class PrivateLibvirtDaemon:
    """One ``libvirtd`` in session mode under ``root`` (a directory it may fill)."""

    def __init__(
        self,
        root: Path,
        *,
        uid: int = NOBODY,
        gid: int = NOBODY,
        host_uuid: str | None = None,
        migration_dir: Path | None = None,
        migration_backing: Path | None = None,
        ambient_capabilities: tuple[str, ...] = ("sys_ptrace",),
    ) -> None:
        self.root = root
        self.uid = uid
        self.gid = gid
        self.host_uuid = host_uuid or str(uuid.uuid4())
        self.migration_dir = migration_dir
        self.migration_backing = migration_backing
        self.ambient_capabilities = ambient_capabilities
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        """The daemon's client socket."""
        return self.root / "run" / "libvirt" / "libvirt-sock"

    @property
    def uri(self) -> str:
        """The libvirt URI of this daemon."""
        return f"qemu:///session?socket={self.socket}"

    @property
    def log(self) -> Path:
        """The daemon's stderr."""
        return self.root / "libvirtd.log"

    def shared_dir(self, name: str) -> Path:
        """A directory both root and the daemon's uid can write (for sockets, images)."""
        path = self.root / name
        path.mkdir(mode=0o755, exist_ok=True)
        os.chown(path, self.uid, self.gid)
        return path

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the daemon and wait until it answers."""
        if os.geteuid() != 0:
            msg = "the private libvirt daemon is started by root (it drops to an unprivileged uid)"
            raise DriverError(msg)
        self._prepare()
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.root / "home"),
            "XDG_RUNTIME_DIR": str(self.root / "run"),
            "XDG_CONFIG_HOME": str(self.root / "config"),
            "XDG_CACHE_HOME": str(self.root / "cache"),
        }
        daemon = [
            "setpriv",
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--clear-groups",
            *_capability_options(self.ambient_capabilities),
            "env",
            "-i",
            *(f"{key}={value}" for key, value in env.items()),
            "libvirtd",
        ]
        # Under a subreaper, so that the QEMU processes libvirt daemonizes are reaped at once
        # (see novacron_libvirt.testing.reaper) whatever this machine's init does.
        command = [sys.executable, "-m", "novacron_libvirt.testing.reaper", "--"]
        command += ["unshare", "--mount", "--propagation", "private"]
        if self.migration_dir is not None and self.migration_backing is not None:
            bind = (
                f"mount --bind {shlex.quote(str(self.migration_backing))} "
                f"{shlex.quote(str(self.migration_dir))} && exec {shlex.join(daemon)}"
            )
            command += ["sh", "-c", bind]
        else:
            command += daemon
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(  # noqa: S603 - argv built here, no shell
                command, stdout=log, stderr=subprocess.STDOUT, cwd=self.root
            )
        self._wait_ready(timeout_s)

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        for name in ("home", "run", "config/libvirt", "cache"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        (self.root / "config" / "libvirt" / "libvirtd.conf").write_text(
            f'host_uuid = "{self.host_uuid}"\n'
        )
        for path in [self.root / "home", self.root / "run", self.root / "cache"]:
            os.chown(path, self.uid, self.gid)
        for path in [self.root / "config", self.root / "config" / "libvirt"]:
            os.chown(path, self.uid, self.gid)
        if self.migration_dir is not None:
            self.migration_dir.mkdir(parents=True, exist_ok=True)
        if self.migration_backing is not None:
            self.migration_backing.mkdir(mode=0o755, parents=True, exist_ok=True)
            os.chown(self.migration_backing, self.uid, self.gid)

    def _wait_ready(self, timeout_s: float) -> None:
        import libvirt

        deadline = time.monotonic() + timeout_s
        while True:
            process = self._process
            if process is not None and process.poll() is not None:
                msg = f"libvirtd exited with {process.returncode}: {self._log_tail()}"
                raise DriverError(msg)
            if self.socket.exists():
                try:
                    libvirt.open(self.uri).close()
                except libvirt.libvirtError:
                    pass
                else:
                    return
            if time.monotonic() > deadline:
                msg = f"libvirtd did not answer within {timeout_s} s: {self._log_tail()}"
                raise DriverError(msg)
            time.sleep(0.05)

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Destroy every running domain, stop the daemon and any QEMU it left behind."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(Exception):
            _destroy_all(self.uri)
        qemu_pids = self._qemu_pids()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for pid in qemu_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _qemu_pids(self) -> list[int]:
        pids: list[int] = []
        for pid_file in (self.root / "run" / "libvirt" / "qemu" / "run").glob("*.pid"):
            with contextlib.suppress(OSError, ValueError):
                pids.append(int(pid_file.read_text().strip()))
        return pids

    def __enter__(self) -> PrivateLibvirtDaemon:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _capability_options(names: tuple[str, ...]) -> list[str]:
    if not names:
        return []
    wanted = ",".join(f"+{name}" for name in names)
    return [f"--inh-caps={wanted}", f"--ambient-caps={wanted}"]


def _destroy_all(uri: str) -> None:
    import libvirt

    conn: Any = libvirt.open(uri)
    try:
        for domain in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            with contextlib.suppress(libvirt.libvirtError):
                domain.destroy()
    finally:
        conn.close()
