"""The builtin ``first-fit`` placement policy: the first host, in the order given, that fits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from novacron_sdk.errors import ConfigError
from novacron_sdk.placement.interface import (
    HostUsage,
    PlacementDecision,
    PlacementPolicy,
    PlacementRequest,
)


def capacity_shortfall(request: PlacementRequest, usage: HostUsage) -> str | None:
    """Why ``usage`` cannot hold ``request`` (vCPU, memory, GPU, disk), or None if it can."""
    host = usage.host
    checks = (
        ("vCPUs", request.vcpus, host.vcpus - usage.used_vcpus),
        ("MiB of memory", request.memory_mib, host.memory_mib - usage.used_memory_mib),
        ("GPUs", request.gpus, host.gpus - usage.used_gpus),
        ("GiB of disk", request.disk_gib, host.disk_gib - usage.used_disk_gib),
    )
    for what, wanted, free in checks:
        if wanted > free:
            return f"needs {wanted} {what}, {max(free, 0)} free"
    return None


class FirstFitPolicy(PlacementPolicy):
    """Filters hosts, then takes the first accepted one in the order they were given.

    Filters, in order: ``exclude_hosts``, ``required_labels``, capacity (vCPU, memory, GPU,
    disk), ``anti_affinity_group`` (a host that already runs a VM of the group is rejected),
    ``affinity_group`` (if any host runs a VM of the group, only those hosts qualify).
    Settings: ``alternates`` (default 2), how many further accepted hosts to name.
    """

    name = "first-fit"

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        alternates = self.settings.get("alternates", 2)
        if isinstance(alternates, bool) or not isinstance(alternates, int) or alternates < 0:
            msg = (
                f"first-fit setting 'alternates' must be a non-negative integer, got {alternates!r}"
            )
            raise ConfigError(msg)
        self.alternates = alternates

    def place(self, request: PlacementRequest, hosts: Sequence[HostUsage]) -> PlacementDecision:
        """Choose the first host that passes every filter."""
        rejected: dict[str, str] = {}
        candidates: list[HostUsage] = []
        excluded = set(request.exclude_hosts)
        for usage in hosts:
            reason = self._filter(request, usage, excluded)
            if reason is None:
                candidates.append(usage)
            else:
                rejected[usage.host.id] = reason
        group = request.affinity_group
        if group and any(u.groups.get(group, 0) > 0 for u in hosts):
            kept = []
            for usage in candidates:
                if usage.groups.get(group, 0) > 0:
                    kept.append(usage)
                else:
                    rejected[usage.host.id] = (
                        f"affinity group {group!r} already runs on other hosts"
                    )
            candidates = kept
        chosen = candidates[0].host.id if candidates else None
        return PlacementDecision(
            request=request.name,
            host_id=chosen,
            alternates=[u.host.id for u in candidates[1 : 1 + self.alternates]],
            rejected=rejected,
            policy=self.name,
        )

    @staticmethod
    def _filter(request: PlacementRequest, usage: HostUsage, excluded: set[str]) -> str | None:
        host = usage.host
        if host.id in excluded:
            return "excluded by the request"
        for key, value in request.required_labels.items():
            if host.labels.get(key) != value:
                have = host.labels.get(key)
                return f"label {key}={value} required, host has {key}={have}"
        shortfall = capacity_shortfall(request, usage)
        if shortfall is not None:
            return shortfall
        anti = request.anti_affinity_group
        if anti and usage.groups.get(anti, 0) > 0:
            return f"anti-affinity group {anti!r} already has a VM on this host"
        return None
