"""Fixtures for the libvirt plugin tests: private libvirt daemons and a real tiny QEMU guest.

The QEMU tests need the system packages CI installs (libvirt-daemon-driver-qemu,
qemu-system-x86, busybox-static, ...), root (to start the daemons under an unprivileged uid
in their own mount namespaces) and apt (to fetch Debian's kernel once; it is cached in
``$NOVACRON_TEST_GUEST_DIR``). Without them those tests skip and say what is missing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest

from novacron_libvirt.testing.lab import BootedGuest, Lab, boot_guest, qemu_unavailable_reason

if TYPE_CHECKING:
    # The driver imports libvirt-python, which test modules check for with importorskip.
    from novacron_libvirt.driver import LibvirtDriver


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """Start the two daemons once per session (a fraction of a second each)."""
    reason = qemu_unavailable_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab.start()
    try:
        yield lab
    finally:
        lab.stop()


@pytest.fixture(scope="session")
def booted_guest(lab: Lab) -> BootedGuest:
    """One tiny guest booted under QEMU/TCG for the session (the tests' driver manages it)."""
    return asyncio.run(boot_guest(lab, "session-guest"))


@pytest.fixture
async def source_driver(lab: Lab) -> AsyncIterator[LibvirtDriver]:
    """The driver on the source daemon (short shutdown timeout: busybox ignores ACPI)."""
    from novacron_libvirt.driver import LibvirtDriver

    driver = LibvirtDriver({"uri": lab.source.uri, "shutdown_timeout_s": 2})
    try:
        yield driver
    finally:
        await driver.close()


@pytest.fixture
async def destination_driver(lab: Lab) -> AsyncIterator[LibvirtDriver]:
    """The driver on the destination daemon."""
    from novacron_libvirt.driver import LibvirtDriver

    driver = LibvirtDriver({"uri": lab.destination.uri, "shutdown_timeout_s": 2})
    try:
        yield driver
    finally:
        await driver.close()
