"""The Nova-style DWCP scheduler: filter the hosts, weigh the survivors, keep alternates.

Settings (all optional): ``weights`` (weigher name -> multiplier; see ``weighers``),
``alternates`` (how many runner-up hosts to return, default 2), ``max_instances_per_host``,
``gpu_workload`` (the GPU demand fragmentation is measured against) and ``extra_filters``
(callables ``(request, host) -> reason | None``, e.g. one that asks the
``novacron_filter_host`` hook).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from novacron_dwcp.placement.filters import FilterContext, HostFilter, first_rejection
from novacron_dwcp.placement.weighers import build_weighers, normalize
from novacron_sdk.errors import ConfigError, NovaCronError
from novacron_sdk.placement.interface import (
    HostUsage,
    PlacementDecision,
    PlacementPolicy,
    PlacementRequest,
)


class NoValidHostError(NovaCronError):
    """No host passed the filters; the message says why each kind of host was rejected."""


def explain(decision: PlacementDecision) -> str:
    """One line saying why no host fits (or where the request went)."""
    if decision.host_id is not None:
        return f"{decision.request} -> {decision.host_id}"
    if not decision.rejected:
        return f"no host fits {decision.request}: the cluster has no hosts"
    # Group reasons that differ only in their numbers, so a 1,000-host cluster gives a
    # readable line; a number that differs between the hosts of a group shows as a range.
    kinds = Counter(_reason_kind(r) for r in decision.rejected.values())
    parts = []
    for kind, count in kinds.most_common():
        group = [r for r in decision.rejected.values() if _reason_kind(r) == kind]
        parts.append(f"{count} host(s): {_merge_numbers(group)}")
    return f"no host fits {decision.request}: " + "; ".join(parts)


def _reason_kind(reason: str) -> str:
    return " ".join(w for w in reason.split() if not w.isdigit())


def _merge_numbers(reasons: list[str]) -> str:
    """``reasons`` (one kind) as one: each number that differs between them as ``min-max``."""
    split = [reason.split() for reason in reasons]
    if len({len(words) for words in split}) != 1:
        return reasons[0]
    merged = []
    for words in zip(*split, strict=True):
        if words[0].isdigit() and len(set(words)) > 1:
            values = [int(word) for word in words]
            merged.append(f"{min(values)}-{max(values)}")
        else:
            merged.append(words[0])
    return " ".join(merged)


def require_host(decision: PlacementDecision) -> str:
    """The chosen host id, or :class:`NoValidHostError` with :func:`explain`'s reason."""
    if decision.host_id is None:
        raise NoValidHostError(explain(decision) + "; add capacity or relax the request")
    return decision.host_id


class NovaScheduler(PlacementPolicy):
    """Filters (capacity, labels/aggregates, affinity, anti-affinity, max instances) + weighers."""

    name: ClassVar[str] = "nova"
    default_weights: ClassVar[Mapping[str, float]] = {}

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        raw = self.settings.get("weights", {})
        if not isinstance(raw, Mapping):
            msg = "placement setting 'weights' must map weigher names to multipliers"
            raise ConfigError(msg)
        weights = {**self.default_weights, **raw}
        self.weighers = build_weighers({**self.settings, "weights": weights})
        self.alternates = int(self.settings.get("alternates", 2))
        limit = self.settings.get("max_instances_per_host")
        self.max_instances_per_host = None if limit is None else int(limit)
        self.extra_filters: tuple[HostFilter, ...] = tuple(self.settings.get("extra_filters", ()))
        if self.alternates < 0:
            msg = f"placement setting 'alternates' must be >= 0, got {self.alternates}"
            raise ConfigError(msg)

    def place(self, request: PlacementRequest, hosts: Sequence[HostUsage]) -> PlacementDecision:
        """Filter, weigh, and return the best host with alternates (or every rejection)."""
        context = FilterContext.build(
            request, hosts, self.max_instances_per_host, self.extra_filters
        )
        rejected: dict[str, str] = {}
        passing: list[HostUsage] = []
        for host in hosts:
            reason = first_rejection(request, host, context)
            if reason is None:
                passing.append(host)
            else:
                rejected[host.host.id] = reason
        ranked = self.rank(request, passing)
        return PlacementDecision(
            request=request.name,
            host_id=ranked[0] if ranked else None,
            alternates=ranked[1 : 1 + self.alternates],
            rejected=rejected,
            policy=self.name,
        )

    def rank(self, request: PlacementRequest, hosts: Sequence[HostUsage]) -> list[str]:
        """Host ids by total weight, best first; ties keep the hosts' order."""
        totals = [0.0] * len(hosts)
        for multiplier, weigher in self.weighers:
            values = normalize([weigher(request, h) for h in hosts]) if hosts else []
            for i, value in enumerate(values):
                totals[i] += multiplier * value
        order = sorted(range(len(hosts)), key=lambda i: -totals[i])
        return [hosts[i].host.id for i in order]


class FragmentationAwareScheduler(NovaScheduler):
    """FGD-style: the host whose expected GPU fragmentation grows least, packing otherwise.

    Same filters as :class:`NovaScheduler`; the GPU fragmentation weigher dominates and RAM
    packs (negative multiplier) to break its ties, which keeps whole hosts free for big jobs.
    """

    name: ClassVar[str] = "fgd"
    default_weights: ClassVar[Mapping[str, float]] = {
        "gpu_fragmentation": 10.0,
        "ram": -1.0,
        "cpu": -1.0,
    }
