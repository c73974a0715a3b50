"""The batch solver against brute force on small instances, and its greedy fallback."""

from __future__ import annotations

import itertools
import random
import sys

import pytest

from novacron_dwcp.placement.batch import capacity_lower_bound, solve_batch
from novacron_sdk.placement.interface import PlacementRequest
from novacron_sdk.testing.placement import host


def random_instance(seed):
    rng = random.Random(seed)
    hosts = []
    for i in range(rng.randint(2, 4)):
        usage = host(
            f"h{i}",
            vcpus=rng.choice((4, 8)),
            memory_mib=rng.choice((8192, 16384)),
            gpus=rng.choice((0, 0, 2)),
            disk_gib=0,
        )
        if rng.random() < 0.3:
            usage = usage.model_copy(
                update={"used_vcpus": 2, "instances": 1, "groups": {rng.choice("ab"): 1}}
            )
        if rng.random() < 0.2:
            usage.host.labels["zone"] = "z"
        hosts.append(usage)
    requests = []
    for i in range(rng.randint(3, 6)):
        requests.append(
            PlacementRequest(
                name=f"r{i}",
                vcpus=rng.randint(1, 4),
                memory_mib=rng.choice((1024, 4096, 8192)),
                gpus=rng.choice((0, 0, 0, 1)),
                affinity_group="a" if rng.random() < 0.2 else None,
                anti_affinity_group="b" if rng.random() < 0.3 else None,
                required_labels={"zone": "z"} if rng.random() < 0.1 else {},
                exclude_hosts=["h0"] if rng.random() < 0.1 else [],
            )
        )
    return hosts, requests


def violations(requests, hosts, assignment):
    """Why an assignment (host id or None per request) breaks a rule; empty when valid."""
    problems = []
    by_id = {h.host.id: h for h in hosts}
    load = {h.host.id: [h.used_vcpus, h.used_memory_mib, h.used_gpus] for h in hosts}
    anti = {h.host.id: h.groups.get("b", 0) for h in hosts}
    affinity_hosts = set()
    for request, target in zip(requests, assignment, strict=True):
        if target is None:
            continue
        usage = by_id[target]
        if target in request.exclude_hosts:
            problems.append("excluded")
        if any(usage.host.labels.get(k) != v for k, v in request.required_labels.items()):
            problems.append("labels")
        load[target][0] += request.vcpus
        load[target][1] += request.memory_mib
        load[target][2] += request.gpus
        if request.anti_affinity_group:
            anti[target] += 1
        if request.affinity_group:
            affinity_hosts.add(target)
    for h in hosts:
        vcpus, memory, gpus = load[h.host.id]
        if vcpus > h.host.vcpus or memory > h.host.memory_mib or gpus > h.host.gpus:
            problems.append(f"capacity {h.host.id}")
        if anti[h.host.id] > 1:
            problems.append(f"anti-affinity {h.host.id}")
    holders = {h.host.id for h in hosts if h.groups.get("a", 0) > 0}
    if len(affinity_hosts) > 1 or (holders and affinity_hosts - holders):
        problems.append("affinity")
    return problems


def brute_force(requests, hosts):
    """Lexicographic optimum (unplaced VMs, hosts used) over every assignment."""
    choices = [h.host.id for h in hosts] + [None]
    best = None
    for assignment in itertools.product(choices, repeat=len(requests)):
        if violations(requests, hosts, assignment):
            continue
        used = {h.host.id for h in hosts if h.instances} | {a for a in assignment if a}
        value = (assignment.count(None), len(used))
        best = value if best is None or value < best else best
    return best


@pytest.mark.parametrize("seed", range(25))
def test_cp_sat_matches_brute_force(seed):
    pytest.importorskip("ortools", reason="the cpsat extra is not installed")
    hosts, requests = random_instance(seed)
    result = solve_batch(requests, hosts, solver="cp-sat", time_limit_s=10)
    assignment = [d.host_id for d in result.decisions]
    assert violations(requests, hosts, assignment) == []
    assert result.status == "optimal"
    assert (len(result.unplaced), result.hosts_used) == brute_force(requests, hosts)
    if not result.unplaced:
        assert result.lower_bound == result.hosts_used


@pytest.mark.parametrize("seed", range(25))
def test_greedy_is_valid_and_never_beats_the_optimum(seed):
    hosts, requests = random_instance(seed)
    result = solve_batch(requests, hosts, solver="greedy")
    assignment = [d.host_id for d in result.decisions]
    assert violations(requests, hosts, assignment) == []
    unplaced, used = brute_force(requests, hosts)
    assert len(result.unplaced) >= unplaced
    if not result.unplaced and not unplaced:
        assert result.hosts_used >= used
        assert capacity_lower_bound(requests, hosts) <= used


def test_consolidation_on_identical_hosts_reaches_the_bound():
    pytest.importorskip("ortools", reason="the cpsat extra is not installed")
    hosts = [host(f"h{i}", vcpus=16, memory_mib=65536) for i in range(12)]
    rng = random.Random(1)
    requests = [
        PlacementRequest(name=f"vm{i}", vcpus=rng.choice((1, 2, 4, 8)), memory_mib=4096)
        for i in range(30)
    ]
    result = solve_batch(requests, hosts, solver="cp-sat", time_limit_s=10)
    demand = sum(r.vcpus for r in requests)
    assert result.lower_bound >= -(-demand // 16)
    assert result.hosts_used == result.lower_bound
    assert result.solver == "cp-sat"


def test_auto_falls_back_to_greedy_without_ortools(monkeypatch):
    # A None entry makes `import ortools...` fail exactly as when the extra is not installed.
    import novacron_dwcp.placement as package

    for name in [n for n in sys.modules if n == "ortools" or n.startswith("ortools.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "ortools", None)
    monkeypatch.delitem(sys.modules, "novacron_dwcp.placement.cpsat", raising=False)
    monkeypatch.delattr(package, "cpsat", raising=False)
    hosts = [host(f"h{i}", vcpus=4) for i in range(3)]
    requests = [PlacementRequest(name=f"vm{i}", vcpus=2) for i in range(4)]
    result = solve_batch(requests, hosts)
    assert result.solver == "greedy"
    assert result.hosts_used == 2
    assert result.lower_bound == 2
    assert any("OR-tools" in note for note in result.notes)


def test_unknown_solver_is_a_config_error():
    from novacron_sdk.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown batch solver"):
        solve_batch([], [], solver="magic")  # type: ignore[arg-type]
