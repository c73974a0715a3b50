"""Batch placement: many VMs at once on as few hosts as possible (consolidation, rebalancing).

:func:`solve_batch` builds an OR-tools CP-SAT model (the ``cpsat`` extra) and returns the best
assignment found within the time limit together with a proven lower bound on the hosts used.
Without OR-tools it falls back to best-fit decreasing, bounded by the capacity relaxation.
Identical requests become one integer variable per host, so hundreds of VMs stay tractable.

Both solvers honour the scheduler's ``max_instances_per_host`` and ``extra_filters``. CP-SAT
asks each extra filter once per request and host, against the hosts' usage before the batch
(greedy asks it again as the batch fills the hosts). When some VMs are left without a host,
the lower bound covers only the VMs that were placed, so it never exceeds ``hosts_used``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from novacron_dwcp.placement.filters import FilterContext, HostFilter, first_rejection
from novacron_dwcp.placement.scheduler import NovaScheduler
from novacron_sdk.errors import ConfigError
from novacron_sdk.placement.interface import (
    HostUsage,
    PlacementDecision,
    PlacementRequest,
)

SolverName = Literal["auto", "cp-sat", "greedy"]
DIMENSIONS = ("vcpus", "memory_mib", "gpus", "disk_gib")


@dataclass
class BatchResult:
    """The assignment, how many hosts it uses, and the proven lower bound on that number."""

    decisions: list[PlacementDecision]
    hosts_used: int
    lower_bound: int
    status: str
    solver: str
    wall_s: float
    notes: list[str] = field(default_factory=list)

    @property
    def unplaced(self) -> list[str]:
        """Requests left without a host."""
        return [d.request for d in self.decisions if d.host_id is None]


def _demand(request: PlacementRequest) -> tuple[int, int, int, int]:
    return (request.vcpus, request.memory_mib, request.gpus, request.disk_gib)


def _free(host: HostUsage) -> tuple[int, int, int, int]:
    h = host.host
    disk = h.disk_gib - host.used_disk_gib if h.disk_gib else 2**31
    return (host.free_vcpus, host.free_memory_mib, h.gpus - host.used_gpus, disk)


def placeable(
    requests: Sequence[PlacementRequest],
    hosts: Sequence[HostUsage],
    *,
    max_instances_per_host: int | None = None,
    extra_filters: Sequence[HostFilter] = (),
) -> list[PlacementRequest]:
    """The requests that at least one host allows before the batch (the others never fit)."""
    kept = []
    for request in requests:
        context = FilterContext.build(request, hosts, max_instances_per_host, extra_filters)
        if any(first_rejection(request, h, context) is None for h in hosts):
            kept.append(request)
    return kept


def capacity_lower_bound(
    requests: Sequence[PlacementRequest],
    hosts: Sequence[HostUsage],
    *,
    max_instances_per_host: int | None = None,
    extra_filters: Sequence[HostFilter] = (),
) -> int:
    """Hosts used at least: busy hosts, plus the fewest empty ones whose capacity covers the rest.

    A relaxation (items may be split across hosts), so it never exceeds the optimum. Only
    requests some host allows count (see :func:`placeable`): one no host can take is left
    out by every solution and needs no host.
    """
    fitting = placeable(
        requests,
        hosts,
        max_instances_per_host=max_instances_per_host,
        extra_filters=extra_filters,
    )
    busy = [h for h in hosts if h.instances > 0]
    empty = [h for h in hosts if h.instances == 0]
    extra = 0
    for dim in range(len(DIMENSIONS)):
        need = sum(_demand(r)[dim] for r in fitting) - sum(max(0, _free(h)[dim]) for h in busy)
        if need <= 0:
            continue
        capacities = sorted((_free(h)[dim] for h in empty), reverse=True)
        covered, count = 0, 0
        for cap in capacities:
            if covered >= need:
                break
            covered += cap
            count += 1
        extra = max(extra, count)
    return len(busy) + extra


def greedy_batch(
    requests: Sequence[PlacementRequest],
    hosts: Sequence[HostUsage],
    policy_name: str = "batch",
    *,
    max_instances_per_host: int | None = None,
    extra_filters: Sequence[HostFilter] = (),
) -> list[PlacementDecision]:
    """Best-fit decreasing: biggest requests first, each onto the fullest host that fits.

    The scheduler's instance limit and extra filters apply to every step. Decisions come
    back in the order of ``requests``.
    """
    packer = NovaScheduler(
        {
            "weights": {"ram": -1.0, "cpu": -1.0, "gpu_fragmentation": 0.0},
            "max_instances_per_host": max_instances_per_host,
            "extra_filters": tuple(extra_filters),
        }
    )
    largest = [max((_free(h)[d] for h in hosts), default=1) or 1 for d in range(2)]

    def size(request: PlacementRequest) -> float:
        return max(request.vcpus / largest[0], request.memory_mib / largest[1]) + request.gpus

    order = sorted(range(len(requests)), key=lambda i: -size(requests[i]))
    placed = packer.place_batch([requests[i] for i in order], hosts)
    decisions: list[PlacementDecision | None] = [None] * len(requests)
    for i, decision in zip(order, placed, strict=True):
        decisions[i] = decision.model_copy(update={"policy": policy_name})
    return [d for d in decisions if d is not None]


def explain_batch(
    requests: Sequence[PlacementRequest],
    hosts: Sequence[HostUsage],
    chosen: Sequence[str | None],
    policy_name: str,
    *,
    max_instances_per_host: int | None = None,
    extra_filters: Sequence[HostFilter] = (),
) -> list[PlacementDecision]:
    """Decisions for a solved batch; a VM left out gets every host's reason once all are full
    (the same filters as the solver: instance limit and extra filters included)."""
    final = {h.host.id: h.model_copy(deep=True) for h in hosts}
    for request, host_id in zip(requests, chosen, strict=True):
        if host_id is not None:
            _count(final[host_id], request)
    decisions = []
    for request, host_id in zip(requests, chosen, strict=True):
        rejected: dict[str, str] = {}
        if host_id is None:
            context = FilterContext.build(
                request, list(final.values()), max_instances_per_host, extra_filters
            )
            for usage in final.values():
                reason = first_rejection(request, usage, context)
                rejected[usage.host.id] = reason or "kept free for the rest of the batch"
        decisions.append(
            PlacementDecision(
                request=request.name, host_id=host_id, rejected=rejected, policy=policy_name
            )
        )
    return decisions


def _count(usage: HostUsage, request: PlacementRequest) -> None:
    usage.used_vcpus += request.vcpus
    usage.used_memory_mib += request.memory_mib
    usage.used_gpus += request.gpus
    usage.used_disk_gib += request.disk_gib
    usage.instances += 1
    for group in (request.affinity_group, request.anti_affinity_group):
        if group:
            usage.groups[group] = usage.groups.get(group, 0) + 1


def hosts_used(decisions: Sequence[PlacementDecision], hosts: Sequence[HostUsage]) -> int:
    """Hosts running at least one VM after the decisions."""
    return len(
        {h.host.id for h in hosts if h.instances > 0}
        | {d.host_id for d in decisions if d.host_id is not None}
    )


def solve_batch(
    requests: Sequence[PlacementRequest],
    hosts: Sequence[HostUsage],
    *,
    time_limit_s: float = 10.0,
    solver: SolverName = "auto",
    workers: int = 2,
    policy_name: str = "batch",
    max_instances_per_host: int | None = None,
    extra_filters: Sequence[HostFilter] = (),
) -> BatchResult:
    """Place ``requests`` on as few hosts as possible, with a proven lower bound.

    ``max_instances_per_host`` and ``extra_filters`` are the scheduler settings of the same
    names. With VMs left out, the bound covers the placed ones only (never above
    ``hosts_used``) and a note says so.
    """
    if solver not in ("auto", "cp-sat", "greedy"):
        msg = f"unknown batch solver {solver!r}; use auto, cp-sat or greedy"
        raise ConfigError(msg)
    started = time.perf_counter()
    rules: dict[str, Any] = {
        "max_instances_per_host": max_instances_per_host,
        "extra_filters": tuple(extra_filters),
    }
    greedy = greedy_batch(requests, hosts, policy_name, **rules)
    bound = capacity_lower_bound(requests, hosts, **rules)
    notes: list[str] = []
    if solver != "greedy":
        try:
            from novacron_dwcp.placement import cpsat
        except ImportError as exc:
            if solver == "cp-sat":
                msg = "the cp-sat solver needs OR-tools: pip install 'novacron-dwcp[cpsat]'"
                raise ConfigError(msg) from exc
            notes.append("OR-tools is not installed: greedy solution, capacity bound")
        else:
            outcome = cpsat.solve(
                requests, hosts, greedy, time_limit_s=time_limit_s, workers=workers, **rules
            )
            if outcome is None:
                notes.append("CP-SAT found no solution in time: greedy solution")
            else:
                chosen, cp_bound, status = outcome
                bound = max(bound, cp_bound)
                decisions = explain_batch(requests, hosts, chosen, policy_name, **rules)
                if _better_or_equal(decisions, greedy, hosts):
                    return _result(
                        decisions,
                        hosts,
                        bound,
                        status,
                        "cp-sat",
                        requests=requests,
                        started=started,
                        notes=notes,
                    )
                notes.append("CP-SAT's best was worse than greedy in the time limit")
    return _result(
        greedy,
        hosts,
        bound,
        "feasible",
        "greedy",
        requests=requests,
        started=started,
        notes=notes,
    )


def _result(
    decisions: list[PlacementDecision],
    hosts: Sequence[HostUsage],
    bound: int,
    status: str,
    solver: str,
    *,
    requests: Sequence[PlacementRequest],
    started: float,
    notes: list[str],
) -> BatchResult:
    """The result, marked optimal when the solution meets the bound.

    With VMs left out, a bound over every request says nothing about the hosts the placed
    ones need: the bound becomes the capacity bound of the placed VMs (at most the hosts
    used), and a note says so.
    """
    used = hosts_used(decisions, hosts)
    left_out = sum(d.host_id is None for d in decisions)
    if left_out:
        placed = [r for r, d in zip(requests, decisions, strict=True) if d.host_id is not None]
        bound = min(used, capacity_lower_bound(placed, hosts))
        notes = [
            *notes,
            f"{left_out} VM(s) left without a host: the lower bound covers the "
            f"{len(decisions) - left_out} placed VM(s) only",
        ]
    elif used == bound:
        status = "optimal"  # the capacity bound can prove what the solver did not
    return BatchResult(decisions, used, bound, status, solver, time.perf_counter() - started, notes)


def _better_or_equal(
    candidate: Sequence[PlacementDecision],
    reference: Sequence[PlacementDecision],
    hosts: Sequence[HostUsage],
) -> bool:
    """Fewer unplaced VMs, then fewer hosts: is ``candidate`` at least as good?"""

    def key(decisions: Sequence[PlacementDecision]) -> tuple[int, int]:
        return (sum(d.host_id is None for d in decisions), hosts_used(decisions, hosts))

    return key(candidate) <= key(reference)


class BatchPolicy(NovaScheduler):
    """Single requests like :class:`NovaScheduler`; batches through :func:`solve_batch`.

    Settings add ``time_limit_s`` (10) and ``solver`` (``auto``, ``cp-sat`` or ``greedy``);
    ``max_instances_per_host`` and ``extra_filters`` hold for batches as for single requests.
    """

    name: ClassVar[str] = "batch"

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.time_limit_s = float(self.settings.get("time_limit_s", 10.0))
        self.solver: SolverName = self.settings.get("solver", "auto")
        self.last_result: BatchResult | None = None

    def place_batch(
        self, requests: Sequence[PlacementRequest], hosts: Sequence[HostUsage]
    ) -> list[PlacementDecision]:
        """Solve the batch jointly; :attr:`last_result` keeps the bound and solver status."""
        self.last_result = solve_batch(
            requests,
            hosts,
            time_limit_s=self.time_limit_s,
            solver=self.solver,
            policy_name=self.name,
            max_instances_per_host=self.max_instances_per_host,
            extra_filters=self.extra_filters,
        )
        return self.last_result.decisions


def ceil_bound(value: float) -> int:
    """Round a solver's fractional bound up, tolerating float noise."""
    return math.ceil(value - 1e-6)
