"""Hooks of the placement domain."""

from __future__ import annotations

from typing import TYPE_CHECKING

from novacron_sdk.plugin._spec import hookspec

if TYPE_CHECKING:
    from novacron_sdk.placement.interface import HostUsage, PlacementPolicy, PlacementRequest
    from novacron_sdk.plugin.registry import Registry


@hookspec
def novacron_register_placement_policies(registry: Registry[type[PlacementPolicy]]) -> None:
    """Register placement policy classes (subclasses of PlacementPolicy).

    Called once per plugin, the first time the plugin manager needs this registry (never
    at import time), with the shared registry. Call
    ``registry.register(name, "package.module:Class")``; a lazy reference keeps third-party
    SDKs unimported until the entry is used. A name already taken
    raises DuplicateNameError, and the plugin is reported as failed while others keep working.
    """


@hookspec(firstresult=True)
def novacron_filter_host(request: PlacementRequest, host: HostUsage) -> str | None:
    """Reject ``host`` for ``request`` by returning the reason, or return None to accept.

    Called by ``novacron_sdk.placement.service.place`` for every candidate host before the
    policy runs; stops at the first non-None result (the first plugin that rejects it wins).
    """
