"""The GPU-sharing engine: FGD's fragmentation measure, best-fit GPUs, and the policies."""

from __future__ import annotations

import random

import numpy as np
import pytest

from novacron_dwcp.placement.gpu_policies import (
    BestFit,
    CachedFragmentation,
    DotProduct,
    FirstFit,
    FragmentationGradient,
    RandomFit,
    replay,
)
from novacron_dwcp.placement.gpu_sharing import (
    Cluster,
    GpuNode,
    GpuPod,
    Workload,
    read_nodes,
    read_pods,
)


def pod(name, gpu_milli=0, num_gpu=None, cpu=1000, memory=1024):
    gpus = num_gpu if num_gpu is not None else (1 if gpu_milli else 0)
    return GpuPod(name, cpu, memory, gpus, gpu_milli)


WORKLOAD = Workload(
    [pod("share", 500), pod("share2", 500), pod("whole", 1000), pod("two", 1000, num_gpu=2)]
)


def test_workload_weights_ignore_cpu_only_pods():
    workload = Workload([pod("a", 500), pod("cpu-only"), pod("b", 1000)])
    assert workload.weight.sum() == pytest.approx(1.0)
    assert len(workload.weight) == 2


def test_fragmentation_of_a_node_matches_the_hand_computation():
    # GPUs free: 1000 and 300. Share-500 (weight 1/2) and whole-GPU (1/4) tasks fit and
    # cannot use the 300 left on the second GPU; the 2-GPU task (1/4) fits nowhere, so all
    # 1300 free milli-GPUs are fragmented for it.
    frag = WORKLOAD.fragmentation(np.array([64000]), np.array([10**6]), np.array([[1000, 300]]))
    assert frag[0] == pytest.approx(0.5 * 300 + 0.25 * 300 + 0.25 * 1300)


def test_a_node_without_cpu_strands_all_its_free_gpu():
    frag = WORKLOAD.fragmentation(np.array([0]), np.array([10**6]), np.array([[1000, 1000]]))
    assert frag[0] == pytest.approx(2000)


def test_bind_uses_the_fullest_gpu_that_still_fits():
    cluster = Cluster([GpuNode("n", 8000, 65536, 2)])
    cluster.bind(0, pod("first", 400))
    cluster.bind(0, pod("second", 500))
    # The second pod fits on the partly used GPU (600 free), so it goes there.
    assert sorted(cluster.gpu_free[0].tolist()) == [100, 1000]
    assert cluster.free_cpu[0] == 6000


def two_nodes():
    cluster = Cluster([GpuNode("fresh", 32000, 65536, 2), GpuNode("partial", 32000, 65536, 2)])
    cluster.bind(1, pod("existing", 500))
    return cluster


@pytest.mark.parametrize("policy", [FragmentationGradient(WORKLOAD), CachedFragmentation(WORKLOAD)])
def test_fragmentation_policies_fill_the_partly_used_gpu(policy):
    assert policy.choose(two_nodes(), pod("new", 500)) == 1


def test_baselines_choose_as_defined():
    cluster = two_nodes()
    new = pod("new", 500)
    assert FirstFit().choose(cluster, new) == 0
    assert BestFit().choose(cluster, new) == 1  # less left over on the partial node
    assert DotProduct().choose(cluster, new) == 0  # more free GPU to align with
    assert RandomFit(seed=3).choose(cluster, new) in (0, 1)


@pytest.mark.parametrize(
    "policy_factory",
    [
        RandomFit,
        FirstFit,
        BestFit,
        DotProduct,
        lambda: FragmentationGradient(WORKLOAD),
        lambda: CachedFragmentation(WORKLOAD),
    ],
)
def test_no_policy_overcommits_and_none_means_nothing_fits(policy_factory):
    rng = random.Random(5)
    nodes = [
        GpuNode(f"n{i}", rng.choice((8000, 16000)), 65536, rng.choice((0, 2, 4))) for i in range(8)
    ]
    pods = [
        pod(f"p{i}", rng.choice((0, 250, 500, 1000)), cpu=rng.choice((500, 2000)))
        for i in range(80)
    ]
    cluster = Cluster(nodes)
    policy = policy_factory()
    for p in pods:
        feasible = cluster.feasible(p).any()
        node = policy.choose(cluster, p)
        assert (node is not None) == bool(feasible)
        if node is not None:
            cluster.bind(node, p)
    assert (cluster.free_cpu >= 0).all()
    assert (cluster.free_memory >= 0).all()
    assert (cluster.gpu_free[cluster.gpu_free != -1] >= 0).all()


def test_cached_scores_equal_fresh_scores_after_many_bindings():
    rng = random.Random(9)
    nodes = [GpuNode(f"n{i}", 32000, 131072, rng.choice((0, 2, 8))) for i in range(30)]
    kinds = [pod("a", 250), pod("b", 500), pod("c", 1000), pod("d", 1000, num_gpu=2), pod("e")]
    workload = Workload(kinds)
    cached = CachedFragmentation(workload)
    cluster = Cluster(nodes)
    for step in range(150):
        p = kinds[rng.randrange(len(kinds))]
        node = cached.choose(cluster, p)
        if node is None:
            continue
        feasible = np.flatnonzero(cluster.feasible(p))
        before = workload.fragmentation(
            cluster.free_cpu[feasible], cluster.free_memory[feasible], cluster.gpu_free[feasible]
        )
        after = workload.fragmentation(*cluster.after(feasible, p))
        deltas = dict(zip(feasible.tolist(), (after - before).tolist(), strict=True))
        # The choice is a least-fragmentation node; packing only breaks (near-)ties.
        assert deltas[node] <= min(deltas.values()) + 2 * CachedFragmentation.TIE_BREAK, step
        cluster.bind(node, p)


def test_replay_returns_one_choice_per_pod():
    cluster = Cluster([GpuNode("n", 4000, 8192, 1)])
    chosen = replay(FirstFit(), cluster, [pod("a", 500), pod("b", 500), pod("c", 500)])
    assert chosen == [0, 0, None]
    assert cluster.allocated_share() == pytest.approx(1.0)


def test_openb_files_are_read(placement_openb_dir):
    nodes = read_nodes(placement_openb_dir / "openb_node_list_all_node.csv")
    pods = read_pods(placement_openb_dir / "openb_pod_list_default.csv")
    # The counts the trace's README documents.
    assert len(nodes) == 1523
    assert len(pods) == 8152
    assert all(0 < p.per_gpu <= 1000 for p in pods if p.num_gpu)
