"""Lifecycle hook: plugins contribute components that the init orchestrator starts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from novacron_sdk.plugin._spec import hookspec

if TYPE_CHECKING:
    from novacron_sdk.init.interface import Component
    from novacron_sdk.plugin.registry import Registry


@hookspec
def novacron_register_init_components(registry: Registry[type[Component]]) -> None:
    """Contribute components (subclasses of Component) to start with a process.

    Called once per plugin when an orchestrator is built (for example by ``novacron agent``).
    Components declare ``depends_on`` by name; the orchestrator starts them level by level.
    """
