"""Nova-style host filters: each returns why a host cannot take a request, or None.

Filters see one host at a time; :class:`FilterContext` carries what needs the whole cluster
(the hosts that already hold an affinity group) and the scheduler's settings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from novacron_sdk.placement.interface import HostUsage, PlacementRequest

HostFilter = Callable[[PlacementRequest, HostUsage], str | None]
"""A filter: the reason ``host`` is rejected for ``request``, or None to accept it."""


@dataclass(frozen=True)
class FilterContext:
    """Cluster-wide facts the filters need for one request."""

    affinity_hosts: frozenset[str] = frozenset()
    max_instances_per_host: int | None = None
    extra: Sequence[HostFilter] = field(default_factory=tuple)

    @classmethod
    def build(
        cls,
        request: PlacementRequest,
        hosts: Sequence[HostUsage],
        max_instances_per_host: int | None = None,
        extra: Sequence[HostFilter] = (),
    ) -> FilterContext:
        """Collect the hosts already holding members of the request's affinity group."""
        group = request.affinity_group
        holding = frozenset(h.host.id for h in hosts if group and h.groups.get(group, 0) > 0)
        return cls(holding, max_instances_per_host, tuple(extra))


def excluded(request: PlacementRequest, host: HostUsage) -> str | None:
    """The request names this host in ``exclude_hosts`` (e.g. the migration source)."""
    return "excluded by the request" if host.host.id in request.exclude_hosts else None


def capacity(request: PlacementRequest, host: HostUsage) -> str | None:
    """Free vCPUs, memory, GPUs and disk cover the request (disk 0 on a host: not tracked)."""
    h = host.host
    if request.vcpus > host.free_vcpus:
        return f"needs {request.vcpus} vCPUs, {host.free_vcpus} free"
    if request.memory_mib > host.free_memory_mib:
        return f"needs {request.memory_mib} MiB memory, {host.free_memory_mib} MiB free"
    free_gpus = h.gpus - host.used_gpus
    if request.gpus > free_gpus:
        return f"needs {request.gpus} GPUs, {free_gpus} free"
    free_disk = h.disk_gib - host.used_disk_gib
    if h.disk_gib and request.disk_gib > free_disk:
        return f"needs {request.disk_gib} GiB disk, {free_disk} GiB free"
    return None


def host_aggregates(host: HostUsage) -> tuple[str, ...]:
    """The host's aggregate names from ``extra['aggregates']``: a list of names, or one name
    as a string (YAML ``aggregates: gpu-large``), which is one aggregate, never a substring."""
    raw = host.host.extra.get("aggregates")
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (raw,)
    if isinstance(raw, list | tuple | set | frozenset):
        return tuple(str(name) for name in raw)
    return (str(raw),)


def labels(request: PlacementRequest, host: HostUsage) -> str | None:
    """Every required label matches; ``aggregate=NAME`` also matches a name in
    ``extra['aggregates']`` (whole names only, see :func:`host_aggregates`)."""
    for key, value in request.required_labels.items():
        if host.host.labels.get(key) == value:
            continue
        if key == "aggregate" and value in host_aggregates(host):
            continue
        return f"label {key}={value} required, host has {host.host.labels.get(key)!r}"
    return None


def anti_affinity(request: PlacementRequest, host: HostUsage) -> str | None:
    """No other member of the request's anti-affinity group runs on the host."""
    group = request.anti_affinity_group
    if group and host.groups.get(group, 0) > 0:
        return f"anti-affinity group {group!r} already has a VM here"
    return None


def affinity(request: PlacementRequest, host: HostUsage, context: FilterContext) -> str | None:
    """Once an affinity group has members, its new VMs go to a host that holds them."""
    group = request.affinity_group
    if group and context.affinity_hosts and host.host.id not in context.affinity_hosts:
        return f"affinity group {group!r} runs on {', '.join(sorted(context.affinity_hosts))}"
    return None


def max_instances(host: HostUsage, context: FilterContext) -> str | None:
    """The host runs fewer VMs than the limit (``extra['max_instances']`` overrides)."""
    limit = host.host.extra.get("max_instances", context.max_instances_per_host)
    if limit is not None and host.instances >= int(limit):
        return f"already runs {host.instances} VMs, the limit is {limit}"
    return None


def first_rejection(
    request: PlacementRequest, host: HostUsage, context: FilterContext
) -> str | None:
    """Run the filters in Nova's cheap-first order; the first reason wins."""
    for simple in (excluded, capacity, labels, anti_affinity):
        reason = simple(request, host)
        if reason is not None:
            return reason
    reason = affinity(request, host, context) or max_instances(host, context)
    if reason is not None:
        return reason
    for extra in context.extra:
        reason = extra(request, host)
        if reason is not None:
            return reason
    return None
