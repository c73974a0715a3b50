"""Placement as core code calls it: plugin host filters first, then the chosen policy."""

from __future__ import annotations

from collections.abc import Sequence

from novacron_sdk.placement.interface import HostUsage, PlacementDecision, PlacementRequest
from novacron_sdk.plugin.manager import NovaCronPluginManager

FILTER_HOOK = "novacron_filter_host"


def filter_hosts(
    plugins: NovaCronPluginManager, request: PlacementRequest, hosts: Sequence[HostUsage]
) -> tuple[list[HostUsage], dict[str, str]]:
    """Split ``hosts`` into those every plugin accepts and host id -> the first veto."""
    accepted: list[HostUsage] = []
    rejected: dict[str, str] = {}
    for usage in hosts:
        reason = plugins.call_decision(FILTER_HOOK, request=request, host=usage)
        if reason is None:
            accepted.append(usage)
        else:
            rejected[usage.host.id] = f"rejected by a plugin filter: {reason}"
    return accepted, rejected


def place(
    plugins: NovaCronPluginManager,
    request: PlacementRequest,
    hosts: Sequence[HostUsage],
    *,
    policy: str | None = None,
) -> PlacementDecision:
    """Place ``request``: drop the hosts a ``novacron_filter_host`` plugin vetoes, then run
    ``policy`` (default: the registered policy with the highest priority) on the rest.

    The decision's ``rejected`` holds both the plugin vetoes and the policy's own reasons.
    """
    name = policy or plugins.placement.default_name()
    chooser = plugins.placement.get(name)()
    accepted, vetoed = filter_hosts(plugins, request, hosts)
    decision = chooser.place(request, accepted)
    return decision.model_copy(update={"rejected": {**vetoed, **decision.rejected}})
