"""The module named by the ``novacron_sdk`` entry point: this plugin's hook implementations.

Keep it cheap to import: NovaCron imports it every time it starts (even for ``--help``).
Register lazy ``"module:Class"`` references so that your third-party SDK is imported only when
the driver is used, never when plugins are listed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from novacron_sdk.plugin import hookimpl

if TYPE_CHECKING:
    from novacron_sdk.hypervisors.interface import HypervisorDriver
    from novacron_sdk.plugin.registry import Registry


@hookimpl
def novacron_register_hypervisors(registry: Registry[type[HypervisorDriver]]) -> None:
    """Register the PLUGINNAME driver under the name ``PLUGINNAME``."""
    registry.register(
        "PLUGINNAME",
        "novacron_PLUGINNAME.driver:PluginDriver",
        description="PLUGINNAME hypervisor (template: VMs in memory)",
    )
