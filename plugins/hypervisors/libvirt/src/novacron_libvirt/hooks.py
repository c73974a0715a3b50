"""The module named by the ``novacron_sdk`` entry point: registers the ``libvirt`` driver.

NovaCron imports this module every time it starts, so it must stay cheap: the driver is
registered as a lazy reference and libvirt-python is imported only when the driver is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from novacron_sdk.plugin import hookimpl

if TYPE_CHECKING:
    from novacron_sdk.hypervisors.interface import HypervisorDriver
    from novacron_sdk.plugin.registry import Registry


@hookimpl
def novacron_register_hypervisors(registry: Registry[type[HypervisorDriver]]) -> None:
    """Register the libvirt driver under the name ``libvirt``."""
    registry.register(
        "libvirt",
        "novacron_libvirt.driver:LibvirtDriver",
        description="libvirt domains on any libvirt URI (QEMU/KVM, test:///default, ...)",
    )
