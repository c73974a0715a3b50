"""A test lab on one machine: two private libvirt daemons (source, destination) and a guest.

Used by the plugin's tests and by ``benchmarks/qemu_migration.py``. The two daemons see the
same migration socket path (``migration_dir``) as two different directories, like two hosts.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from novacron_libvirt.testing.console import SerialConsole
from novacron_libvirt.testing.daemon import PrivateLibvirtDaemon, missing_binaries
from novacron_libvirt.testing.guest import GuestFiles, build_guest, missing_tools
from novacron_sdk.errors import NotFoundError
from novacron_sdk.models import VM, VMSpec


def qemu_unavailable_reason() -> str | None:
    """Why real QEMU guests cannot run here, or None when they can."""
    if importlib.util.find_spec("libvirt") is None:
        return "libvirt-python is not installed (it builds against libvirt-dev)"
    missing = missing_binaries() + missing_tools()
    if missing:
        return f"system packages missing: {', '.join(missing)} (see docs/libvirt.md)"
    if os.geteuid() != 0:
        return "the private libvirt daemons are started by root (they drop to uid nobody)"
    return None


@dataclass
class Lab:
    """Two private daemons and the guest's files, under one directory."""

    root: Path
    source: PrivateLibvirtDaemon
    destination: PrivateLibvirtDaemon
    guest: GuestFiles
    migration_dir: Path

    @classmethod
    def start(cls) -> Lab:
        """Build (or reuse) the guest, and start both daemons in a new temporary directory."""
        built = build_guest()
        root = Path(tempfile.mkdtemp(prefix="nclv-"))
        root.chmod(0o755)  # the daemons run as nobody and must reach their directories
        images = root / "images"
        images.mkdir(mode=0o755)
        guest = GuestFiles(
            kernel=Path(shutil.copy(built.kernel, images / "vmlinuz")),
            initramfs=Path(shutil.copy(built.initramfs, images / "initramfs.cpio")),
        )
        # Short names: QEMU's monitor socket path under it must stay below 108 bytes.
        migration_dir = root / "mig"
        lab = cls(
            root=root,
            source=PrivateLibvirtDaemon(
                root / "src",
                migration_dir=migration_dir,
                migration_backing=root / "src-mig",
            ),
            destination=PrivateLibvirtDaemon(
                root / "dst",
                migration_dir=migration_dir,
                migration_backing=root / "dst-mig",
            ),
            guest=guest,
            migration_dir=migration_dir,
        )
        try:
            lab.source.start()
            lab.destination.start()
        except BaseException:
            lab.stop()
            raise
        return lab

    def stop(self) -> None:
        """Stop both daemons (and their QEMUs) and delete the directory."""
        self.source.stop()
        self.destination.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def spec(self, name: str, serial_socket: Path, memory_mib: int = 128) -> VMSpec:
        """A spec booting the tiny guest with its console on ``serial_socket``."""
        return VMSpec(
            name=name,
            vcpus=1,
            memory_mib=memory_mib,
            extra={
                "kernel": str(self.guest.kernel),
                "initrd": str(self.guest.initramfs),
                "cmdline": self.guest.cmdline,
                "serial_socket": str(serial_socket),
            },
        )

    def serial_socket(self, daemon: PrivateLibvirtDaemon, name: str) -> Path:
        """Where ``daemon``'s QEMU puts the console socket of domain ``name``."""
        return daemon.shared_dir("serial") / f"{name}.sock"

    def migration_sockets(self, name: str) -> tuple[Path, Path, Path]:
        """(path both QEMUs use, the source's socket here, the destination's socket here)."""
        return (
            self.migration_dir / f"{name}.sock",
            self.root / "src-mig" / f"{name}.sock",
            self.root / "dst-mig" / f"{name}.sock",
        )


@dataclass
class BootedGuest:
    """A running tiny guest."""

    vm: VM
    serial_socket: Path


async def boot_guest(lab: Lab, name: str) -> BootedGuest:
    """Boot the tiny guest on the source daemon and wait for its first heartbeat."""
    from novacron_libvirt.driver import LibvirtDriver

    socket = lab.serial_socket(lab.source, name)
    driver = LibvirtDriver({"uri": lab.source.uri, "events": False})
    try:
        vm = await driver.create_vm(lab.spec(name, socket))
        console = await SerialConsole.connect(socket)
        try:
            await console.next_heartbeat(0, timeout_s=120)
        finally:
            await console.close()
        return BootedGuest(vm, socket)
    finally:
        await driver.close()


@contextlib.asynccontextmanager
async def fresh_guest(lab: Lab, prefix: str) -> AsyncIterator[BootedGuest]:
    """A guest freshly booted on the source daemon, destroyed wherever it ends up."""
    from novacron_libvirt.driver import LibvirtDriver

    name = f"{prefix}-{secrets.token_hex(3)}"  # short: QEMU's socket paths derive from it
    booted = await boot_guest(lab, name)
    try:
        yield booted
    finally:
        for uri in (lab.source.uri, lab.destination.uri):
            driver = LibvirtDriver({"uri": uri, "events": False})
            try:
                await driver.destroy(name)
            except NotFoundError:
                pass
            finally:
                await driver.close()
