"""The CP-SAT model of batch placement (imported only when OR-tools is installed).

Requests with the same size, groups, labels and exclusions form one type; ``n[t, h]`` counts
VMs of type ``t`` on host ``h``. Minimize ``big * unplaced + hosts used``; hosts already
running VMs count as used. Identical empty hosts are ordered to break symmetry, and the greedy
answer seeds the search as a hint.

The scheduler's ``max_instances_per_host`` (``extra['max_instances']`` overrides it per host)
caps the VMs per host; its ``extra_filters`` decide, per request and host against the usage
before the batch, which pairs get a variable at all. Requests the extra filters tell apart
are different types, and hosts they tell apart are not interchangeable.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from ortools.sat.python import cp_model

from novacron_dwcp.placement.batch import DIMENSIONS, _demand, _free, ceil_bound
from novacron_dwcp.placement.filters import HostFilter, excluded, host_aggregates, labels
from novacron_sdk.placement.interface import HostUsage, PlacementDecision, PlacementRequest

TypeKey = tuple[object, ...]


def _type_key(request: PlacementRequest) -> TypeKey:
    return (
        _demand(request),
        request.affinity_group,
        request.anti_affinity_group,
        tuple(sorted(request.required_labels.items())),
        tuple(sorted(request.exclude_hosts)),
    )


def _limit(host: HostUsage, max_instances_per_host: int | None) -> int | None:
    """The host's instance limit: ``extra['max_instances']``, else the scheduler setting."""
    limit = host.host.extra.get("max_instances", max_instances_per_host)
    return None if limit is None else int(limit)


def _allowed(
    request: PlacementRequest,
    host: HostUsage,
    limit: int | None,
    extra_filters: Sequence[HostFilter] = (),
) -> bool:
    """Static filters: labels, exclusions, size vs free space, existing anti-affinity, the
    instance limit and the extra filters."""
    if excluded(request, host) or labels(request, host):
        return False
    if any(d > f for d, f in zip(_demand(request), _free(host), strict=True)):
        return False
    group = request.anti_affinity_group
    if group and host.groups.get(group, 0) > 0:
        return False
    if limit is not None and host.instances >= limit:
        return False
    return all(check(request, host) is None for check in extra_filters)


def _host_signature(host: HostUsage) -> tuple[object, ...] | None:
    """Hosts with equal signatures are interchangeable; busy hosts never are."""
    if host.instances or host.groups:
        return None
    h = host.host
    return (
        _free(host),
        tuple(sorted(h.labels.items())),
        tuple(sorted(host_aggregates(host))),
        h.extra.get("max_instances"),
    )


class _BatchModel:
    """The CP-SAT variables and constraints of one batch."""

    def __init__(
        self,
        requests: Sequence[PlacementRequest],
        hosts: Sequence[HostUsage],
        max_instances_per_host: int | None = None,
        extra_filters: Sequence[HostFilter] = (),
    ) -> None:
        self.requests, self.hosts = requests, hosts
        self.limits = [_limit(h, max_instances_per_host) for h in hosts]
        self.extra_filters = tuple(extra_filters)
        self.types: dict[TypeKey, list[int]] = defaultdict(list)
        self.key_of: list[TypeKey] = [self._key(r) for r in requests]
        for i, key in enumerate(self.key_of):
            self.types[key].append(i)
        self.keys = list(self.types)
        self.first = {k: requests[self.types[k][0]] for k in self.keys}
        self.model = cp_model.CpModel()
        self.used = [self.model.new_bool_var(f"used{j}") for j in range(len(hosts))]
        self.count: dict[tuple[int, int], cp_model.IntVar] = {}
        self.unplaced: list[cp_model.IntVar] = []
        self._counts()
        for j in range(len(hosts)):
            self._host(j)
        _group_constraints(self.model, self.keys, self.first, hosts, self.count)
        self._break_symmetry()
        big = len(hosts) + 1
        self.model.minimize(big * sum(self.unplaced) + sum(self.used))

    def _key(self, request: PlacementRequest) -> TypeKey:
        """Size, groups, labels, exclusions, and which hosts the extra filters let through."""
        if not self.extra_filters:
            return _type_key(request)
        verdicts = tuple(
            all(check(request, h) is None for check in self.extra_filters) for h in self.hosts
        )
        return (*_type_key(request), verdicts)

    def _counts(self) -> None:
        """``n[t, h]`` for every allowed pair; each type's VMs are placed or counted missing."""
        for t, key in enumerate(self.keys):
            size = len(self.types[key])
            for j, host in enumerate(self.hosts):
                if _allowed(self.first[key], host, self.limits[j], self.extra_filters):
                    self.count[t, j] = self.model.new_int_var(0, size, f"n{t}_{j}")
                    self.model.add(self.count[t, j] <= size * self.used[j])
            missing = self.model.new_int_var(0, size, f"unplaced{t}")
            self.unplaced.append(missing)
            placed = [v for (tt, _), v in self.count.items() if tt == t]
            self.model.add(sum(placed) + missing == size)

    def _host(self, j: int) -> None:
        """Capacity per dimension, the instance limit, and whether the host counts as used."""
        host = self.hosts[j]
        on_host = [(t, v) for (t, jj), v in self.count.items() if jj == j]
        if host.instances > 0:
            self.model.add(self.used[j] == 1)
        elif not on_host:
            self.model.add(self.used[j] == 0)
        free = _free(host)
        for d in range(len(DIMENSIONS)):
            terms = [_demand(self.first[self.keys[t]])[d] * v for t, v in on_host]
            if terms:
                self.model.add(sum(terms) <= free[d])
        limit = self.limits[j]
        if limit is not None and on_host:
            self.model.add(sum(v for _, v in on_host) <= limit - host.instances)

    def _break_symmetry(self) -> None:
        """Of interchangeable empty hosts (same free space, labels, limit, and the same
        requests allowed), use earlier ones first."""
        previous: dict[tuple[object, ...], int] = {}
        for j, host in enumerate(self.hosts):
            base = _host_signature(host)
            if base is None:
                continue
            allowed = tuple((t, j) in self.count for t in range(len(self.keys)))
            signature = (*base, self.limits[j], allowed)
            if signature in previous:
                self.model.add(self.used[previous[signature]] >= self.used[j])
            previous[signature] = j

    def hint(self, decisions: Sequence[PlacementDecision]) -> None:
        """Seed the search with a complete solution (counts, used hosts, unplaced VMs)."""
        index = {h.host.id: j for j, h in enumerate(self.hosts)}
        hinted: dict[tuple[int, int], int] = defaultdict(int)
        for decision, request in zip(decisions, self.requests, strict=True):
            if decision.host_id is not None:
                hinted[self.keys.index(self._key(request)), index[decision.host_id]] += 1
        for pair, var in self.count.items():
            self.model.add_hint(var, hinted.get(pair, 0))
        busy = {j for (_, j), n in hinted.items() if n}
        busy |= {j for j, h in enumerate(self.hosts) if h.instances > 0}
        for j, var in enumerate(self.used):
            self.model.add_hint(var, int(j in busy))
        for t, key in enumerate(self.keys):
            placed = sum(n for (tt, _), n in hinted.items() if tt == t)
            self.model.add_hint(self.unplaced[t], len(self.types[key]) - placed)

    def decode(self, solver: cp_model.CpSolver) -> list[str | None]:
        """The host of each request: each type's VMs handed out in request order."""
        chosen: list[str | None] = [None] * len(self.requests)
        for t, key in enumerate(self.keys):
            pending = list(self.types[key])
            for j, host in enumerate(self.hosts):
                if (t, j) in self.count:
                    for _ in range(solver.value(self.count[t, j])):
                        chosen[pending.pop(0)] = host.host.id
        return chosen


def solve(
    requests: Sequence[PlacementRequest],
    hosts: Sequence[HostUsage],
    hint: Sequence[PlacementDecision],
    *,
    time_limit_s: float,
    workers: int,
    max_instances_per_host: int | None = None,
    extra_filters: Sequence[HostFilter] = (),
) -> tuple[list[str | None], int, str] | None:
    """Host per request, the proven bound on hosts used, and the status; None if no solution.

    ``max_instances_per_host`` and ``extra_filters`` are the scheduler settings of those names.
    """
    batch = _BatchModel(requests, hosts, max_instances_per_host, extra_filters)
    batch.hint(hint)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = workers
    status = solver.solve(batch.model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    # With VMs left out the objective mixes them in: it bounds nothing about hosts alone.
    left_out = sum(solver.value(m) for m in batch.unplaced)
    bound = 0 if left_out else ceil_bound(solver.best_objective_bound)
    return batch.decode(solver), bound, "optimal" if status == cp_model.OPTIMAL else "feasible"


def _group_constraints(
    model: cp_model.CpModel,
    keys: list[TypeKey],
    first: dict[TypeKey, PlacementRequest],
    hosts: Sequence[HostUsage],
    count: dict[tuple[int, int], cp_model.IntVar],
) -> None:
    """Anti-affinity: one group member per host. Affinity: the whole group on one host."""
    anti: dict[str, list[int]] = defaultdict(list)
    near: dict[str, list[int]] = defaultdict(list)
    for t, key in enumerate(keys):
        apart, together = first[key].anti_affinity_group, first[key].affinity_group
        if apart:
            anti[apart].append(t)
        if together:
            near[together].append(t)
    for members in anti.values():
        for j in range(len(hosts)):
            terms = [count[t, j] for t in members if (t, j) in count]
            if terms:
                model.add(sum(terms) <= 1)
    for group, members in near.items():
        holding = {j for j, h in enumerate(hosts) if h.groups.get(group, 0) > 0}
        chosen = [model.new_bool_var(f"aff_{group}_{j}") for j in range(len(hosts))]
        model.add(sum(chosen) <= 1)
        for j in range(len(hosts)):
            if holding and j not in holding:
                model.add(chosen[j] == 0)
            for t in members:
                if (t, j) in count:
                    model.add(count[t, j] == 0).only_enforce_if(chosen[j].Not())
