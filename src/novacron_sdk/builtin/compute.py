"""Builtin plugin: the ``sim`` hypervisor (for demos, docs and tests; it says so)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from novacron_sdk.plugin import hookimpl

if TYPE_CHECKING:
    from novacron_sdk.hypervisors.interface import HypervisorDriver
    from novacron_sdk.plugin.registry import Registry


@hookimpl
def novacron_register_hypervisors(registry: Registry[type[HypervisorDriver]]) -> None:
    """Register the simulated hypervisor."""
    registry.register(
        "sim",
        "novacron_sdk.builtin.sim.driver:SimDriver",
        description="Simulated hypervisor: VMs with real memory bytes, for demos and tests",
    )
