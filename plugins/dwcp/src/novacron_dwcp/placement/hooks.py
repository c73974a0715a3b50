"""Hook implementations of DWCP placement (owned by the placement work)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from novacron_sdk.plugin import hookimpl

if TYPE_CHECKING:
    from novacron_sdk.placement.interface import PlacementPolicy
    from novacron_sdk.plugin.registry import Registry


@hookimpl
def novacron_register_placement_policies(registry: Registry[type[PlacementPolicy]]) -> None:
    """Register the DWCP placement policies."""
