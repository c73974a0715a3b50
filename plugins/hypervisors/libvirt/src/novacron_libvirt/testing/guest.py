"""Build a tiny Linux test guest: Debian's kernel plus a busybox initramfs with a heartbeat.

The kernel comes from ``apt-get download linux-image-<version>-amd64`` (the version the
``linux-image-amd64`` meta-package points to); only ``boot/vmlinuz-*`` is extracted from it.
The initramfs is a newc cpio archive written here, in Python: busybox-static, ``/dev/console``
and an ``/init`` that prints ``novacron-heartbeat <n>`` on the serial console every 200 ms and
runs a shell there. Files are cached in ``$NOVACRON_TEST_GUEST_DIR`` (default
``~/.cache/novacron/test-guest``).

Run ``python -m novacron_libvirt.testing.guest`` to build (or just locate) the guest.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from novacron_sdk.errors import DriverError

BUSYBOX_PATHS = (Path("/bin/busybox"), Path("/usr/bin/busybox"))
HEARTBEAT_PREFIX = "novacron-heartbeat"
KERNEL_CMDLINE = "console=ttyS0 panic=-1 quiet mitigations=off"

INIT_SCRIPT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "novacron-guest: booted"
(n=0; while true; do n=$((n+1)); echo "{HEARTBEAT_PREFIX} $n"; sleep 0.2; done) &
while true; do setsid cttyhack sh; done
"""


@dataclass(frozen=True)
class GuestFiles:
    """Paths of a built guest."""

    kernel: Path
    initramfs: Path
    cmdline: str = KERNEL_CMDLINE


def cache_dir() -> Path:
    """Where guest files are cached."""
    configured = os.environ.get("NOVACRON_TEST_GUEST_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "novacron" / "test-guest"


def find_busybox() -> Path | None:
    """A statically linked busybox (Debian: busybox-static), or None."""
    for path in BUSYBOX_PATHS:
        if path.is_file():
            return path
    return None


def missing_tools() -> list[str]:
    """Tools the build needs that this machine lacks (empty when it can build)."""
    missing = [tool for tool in ("apt-get", "apt-cache", "dpkg-deb") if not shutil.which(tool)]
    if find_busybox() is None:
        missing.append("busybox (apt-get install busybox-static)")
    return missing


def build_guest(directory: Path | None = None) -> GuestFiles:
    """Build the guest into ``directory`` (the cache by default) unless it is there already."""
    directory = directory or cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    kernel = directory / "vmlinuz"
    initramfs = directory / "initramfs.cpio"
    if not kernel.exists():
        _fetch_kernel(kernel)
    if not initramfs.exists():
        busybox = find_busybox()
        if busybox is None:
            msg = "busybox is not installed: apt-get install busybox-static"
            raise DriverError(msg)
        partial = initramfs.with_suffix(".partial")
        partial.write_bytes(initramfs_archive(busybox.read_bytes(), INIT_SCRIPT))
        partial.replace(initramfs)
    return GuestFiles(kernel=kernel, initramfs=initramfs)


def kernel_package() -> str:
    """The versioned kernel package ``linux-image-amd64`` depends on right now."""
    shown = _run(["apt-cache", "show", "linux-image-amd64"])
    for line in shown.splitlines():
        if line.startswith("Depends:"):
            return line.split(":", 1)[1].split("(")[0].split(",")[0].strip()
    msg = "apt-cache shows no Depends for linux-image-amd64: run apt-get update first"
    raise DriverError(msg)


def _fetch_kernel(target: Path) -> None:
    package = kernel_package()
    with tempfile.TemporaryDirectory(prefix="novacron-kernel-") as scratch:
        _run(["apt-get", "download", package], cwd=scratch)
        debs = sorted(Path(scratch).glob("*.deb"))
        if not debs:
            msg = f"apt-get download {package} produced no .deb"
            raise DriverError(msg)
        # Only the kernel image is needed: stream the data tarball instead of unpacking
        # the whole package (hundreds of MB of modules).
        command = [_tool("dpkg-deb"), "--fsys-tarfile", str(debs[0])]
        with subprocess.Popen(command, stdout=subprocess.PIPE) as dpkg:  # noqa: S603
            assert dpkg.stdout is not None
            with tarfile.open(fileobj=dpkg.stdout, mode="r|") as archive:
                for member in archive:
                    if member.isfile() and Path(member.name).name.startswith("vmlinuz-"):
                        source = archive.extractfile(member)
                        assert source is not None
                        partial = target.with_suffix(".partial")
                        partial.write_bytes(source.read())
                        partial.replace(target)
                        break
            dpkg.stdout.read()
        if not target.exists():
            msg = f"{debs[0].name} holds no boot/vmlinuz-*"
            raise DriverError(msg)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        msg = f"{name} is not installed (the test guest is built with apt and dpkg)"
        raise DriverError(msg)
    return path


def _run(command: list[str], cwd: str | None = None) -> str:
    # argv comes from this module: fixed tool names and the package name apt reported.
    argv = [_tool(command[0]), *command[1:]]
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=True)  # noqa: S603
    except (OSError, subprocess.CalledProcessError) as exc:
        stderr = getattr(exc, "stderr", "") or ""
        msg = f"{' '.join(command)} failed: {exc} {stderr.strip()}"
        raise DriverError(msg) from exc
    return done.stdout


# -- cpio (newc) ---------------------------------------------------------------------------
def initramfs_archive(busybox: bytes, init_script: str) -> bytes:
    """A newc cpio archive with busybox, ``/init`` and the device nodes a console needs."""
    writer = _CpioWriter()
    for directory in ("bin", "dev", "proc", "sys", "tmp", "root"):
        writer.add(directory, stat.S_IFDIR | 0o755)
    writer.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    writer.add("dev/null", stat.S_IFCHR | 0o666, rdev=(1, 3))
    writer.add("bin/busybox", stat.S_IFREG | 0o755, busybox)
    writer.add("bin/sh", stat.S_IFLNK | 0o777, b"busybox")
    writer.add("init", stat.S_IFREG | 0o755, init_script.encode())
    return writer.finish()


class _CpioWriter:
    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._inode = 1

    def add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = (self._inode, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        self._inode += 1
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        self._parts.append(_pad(header + encoded))
        self._parts.append(_pad(data))

    def finish(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return b"".join(self._parts)


def _pad(chunk: bytes) -> bytes:
    return chunk + b"\0" * (-len(chunk) % 4)


if __name__ == "__main__":  # pragma: no cover - command-line helper
    guest = build_guest()
    sys.stdout.write(f"kernel: {guest.kernel}\ninitramfs: {guest.initramfs}\n")
