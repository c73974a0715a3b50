"""Hook implementations of DWCP placement (the ``place`` CLI command is added with ``predict``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from novacron_sdk.plugin import hookimpl

if TYPE_CHECKING:
    from novacron_sdk.placement.interface import PlacementPolicy
    from novacron_sdk.plugin.registry import Registry


@hookimpl
def novacron_register_placement_policies(registry: Registry[type[PlacementPolicy]]) -> None:
    """Register the DWCP placement policies (lazy references: nothing is imported here)."""
    module = "novacron_dwcp.placement"
    registry.register(
        "nova",
        f"{module}.scheduler:NovaScheduler",
        priority=10,
        description="Filters (capacity, labels, affinity, max instances) and weighted hosts",
    )
    registry.register(
        "fgd",
        f"{module}.scheduler:FragmentationAwareScheduler",
        priority=5,
        description="Least growth of expected GPU fragmentation (FGD), packing on ties",
    )
    registry.register(
        "batch",
        f"{module}.batch:BatchPolicy",
        priority=1,
        description="Batches on the fewest hosts: CP-SAT with a proven bound, greedy fallback",
    )
