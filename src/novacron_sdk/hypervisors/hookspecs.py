"""Hooks of the hypervisors domain."""

from __future__ import annotations

from typing import TYPE_CHECKING

from novacron_sdk.plugin._spec import hookspec

if TYPE_CHECKING:
    from novacron_sdk.hypervisors.interface import HypervisorDriver
    from novacron_sdk.models import VMEvent
    from novacron_sdk.plugin.registry import Registry


@hookspec
def novacron_register_hypervisors(registry: Registry[type[HypervisorDriver]]) -> None:
    """Register hypervisor driver classes (subclasses of HypervisorDriver).

    Called once per plugin, the first time the plugin manager needs this registry (never
    at import time), with the shared registry. Call
    ``registry.register(name, "package.module:Class")``; a lazy reference keeps third-party
    SDKs unimported until the entry is used. A name already taken
    raises DuplicateNameError, and the plugin is reported as failed while others keep working.
    """


@hookspec
def novacron_vm_event(event: VMEvent) -> None:
    """A VM changed state (libvirt domain events, sim lifecycle, cloud waits).

    Broadcast to every plugin; called from the event loop, so implementations must return
    quickly and never block. Exceptions are logged and do not stop other listeners.
    """
