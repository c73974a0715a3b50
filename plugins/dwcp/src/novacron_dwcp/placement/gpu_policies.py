"""Placement policies for the GPU-sharing engine: the baselines of the FGD paper, and ours.

Each policy's ``choose(cluster, pod)`` returns a node index or None (no node has room), and
never changes the cluster; the caller binds the pod.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from novacron_dwcp.placement.gpu_sharing import (
    FULL_GPU,
    Cluster,
    FloatArray,
    GpuPod,
    IntArray,
    Workload,
    bound_state,
)


class SharingPolicy(ABC):
    """Chooses a node of a :class:`Cluster` for one pod."""

    name: ClassVar[str] = ""

    @abstractmethod
    def choose(self, cluster: Cluster, pod: GpuPod) -> int | None:
        """The node to bind ``pod`` to, or None when no node has room."""


def _best(scores: FloatArray, feasible: np.ndarray) -> int | None:
    if not feasible.any():
        return None
    return int(np.argmin(np.where(feasible, scores, np.inf)))


def _gpu_capacity(cluster: Cluster) -> FloatArray:
    capacity: FloatArray = np.maximum(cluster.gpu_count * FULL_GPU, 1).astype(np.float64)
    return capacity


class RandomFit(SharingPolicy):
    """A uniformly random node with room (seeded, so runs repeat)."""

    name: ClassVar[str] = "random"

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def choose(self, cluster: Cluster, pod: GpuPod) -> int | None:
        """Any node with room."""
        candidates = np.flatnonzero(cluster.feasible(pod))
        return int(self.rng.choice(candidates)) if len(candidates) else None


class FirstFit(SharingPolicy):
    """The first node with room, in node-list order."""

    name: ClassVar[str] = "first-fit"

    def choose(self, cluster: Cluster, pod: GpuPod) -> int | None:
        """The lowest-index node with room."""
        feasible = cluster.feasible(pod)
        return int(np.argmax(feasible)) if feasible.any() else None


class BestFit(SharingPolicy):
    """The node left with the least free CPU + memory + GPU (each as a share of capacity)."""

    name: ClassVar[str] = "best-fit"

    def choose(self, cluster: Cluster, pod: GpuPod) -> int | None:
        """Minimize the summed leftover shares."""
        free_gpu = cluster.gpu_free.sum(axis=1) - pod.num_gpu * pod.per_gpu
        leftover = (
            (cluster.free_cpu - pod.cpu_milli) / cluster.cpu_capacity
            + (cluster.free_memory - pod.memory_mib) / cluster.memory_capacity
            + free_gpu / _gpu_capacity(cluster)
        )
        return _best(leftover, cluster.feasible(pod))


class DotProduct(SharingPolicy):
    """Tetris-style alignment: maximize demand . free, both as shares of node capacity."""

    name: ClassVar[str] = "dot-product"

    def choose(self, cluster: Cluster, pod: GpuPod) -> int | None:
        """Maximize the dot product of the pod's demand and the node's free resources."""
        capacity = _gpu_capacity(cluster)
        free_gpu = cluster.gpu_free.sum(axis=1)
        alignment = (
            pod.cpu_milli * cluster.free_cpu / cluster.cpu_capacity**2
            + pod.memory_mib * cluster.free_memory / cluster.memory_capacity**2
            + pod.num_gpu * pod.per_gpu * free_gpu / capacity**2
        )
        return _best(-alignment, cluster.feasible(pod))


class FragmentationGradient(SharingPolicy):
    """FGD-style: the node whose expected fragmentation grows least (ties: first node).

    Recomputes every feasible node's fragmentation after a hypothetical binding, per pod,
    with GPUs chosen best-fit inside the node.
    """

    name: ClassVar[str] = "fgd"

    def __init__(self, workload: Workload) -> None:
        self.workload = workload

    def choose(self, cluster: Cluster, pod: GpuPod) -> int | None:
        """Minimize the fragmentation increase."""
        nodes = np.flatnonzero(cluster.feasible(pod))
        if not len(nodes):
            return None
        state = (cluster.free_cpu[nodes], cluster.free_memory[nodes], cluster.gpu_free[nodes])
        # Nodes in the same state score the same: score each distinct state once.
        distinct, inverse = _distinct(state)
        before = self.workload.fragmentation(*distinct)
        after = self.workload.fragmentation(*bound_state(*distinct, pod))
        return int(nodes[int(np.argmin((after - before)[inverse]))])


def _distinct(
    state: tuple[IntArray, IntArray, IntArray],
) -> tuple[tuple[IntArray, IntArray, IntArray], IntArray]:
    """The distinct rows of a node state, and for each node the index of its row.

    Rows are keyed by their dot product with fixed odd 64-bit multipliers; two different
    states colliding is a 2**-64 event, whose cost is one node scored with a twin's score.
    """
    free_cpu, free_memory, gpu = state
    matrix = np.column_stack([free_cpu, free_memory, gpu])
    mix = np.random.default_rng(7).integers(1, 2**62, size=matrix.shape[1]) * 2 + 1
    _, first, inverse = np.unique(matrix @ mix, return_index=True, return_inverse=True)
    rows: IntArray = inverse.ravel()
    return (free_cpu[first], free_memory[first], gpu[first]), rows


class CachedFragmentation(SharingPolicy):
    """Ours: FGD's fragmentation gradient, cached per pod kind, with packing to break ties.

    A node's score for a pod kind changes only when that node changes, so each decision
    rescores only the nodes bound since this kind was last placed (distinct node states once).
    Ties go to the node left fullest; pods without GPUs avoid nodes with free GPUs.
    """

    name: ClassVar[str] = "dwcp"
    TIE_BREAK = 1e-3
    DEDUPLICATE_ABOVE = 64

    def __init__(self, workload: Workload, *, compress: bool = False) -> None:
        self.workload = workload.compressed() if compress else workload
        self.scores: dict[tuple[int, int, int, int], FloatArray] = {}
        self.seen: dict[tuple[int, int, int, int], IntArray] = {}
        self._scales: tuple[Cluster, FloatArray, FloatArray, FloatArray] | None = None

    def choose(self, cluster: Cluster, pod: GpuPod) -> int | None:
        """Refresh the stale scores of this pod kind, then take the lowest."""
        kind = pod.kind
        if kind not in self.scores:
            self.scores[kind] = np.zeros(len(cluster.nodes))
            self.seen[kind] = np.full(len(cluster.nodes), -1, dtype=np.int64)
        scores, seen = self.scores[kind], self.seen[kind]
        stale = np.flatnonzero(seen != cluster.version)
        if len(stale):
            scores[stale] = self._score(cluster, pod, stale)
            seen[stale] = cluster.version[stale]
        best = int(np.argmin(scores))
        return None if np.isinf(scores[best]) else best

    def _score(self, cluster: Cluster, pod: GpuPod, nodes: IntArray) -> FloatArray:
        """Fragmentation increase plus the tie-break, +inf where the pod does not fit."""
        free_cpu, free_memory = cluster.free_cpu[nodes], cluster.free_memory[nodes]
        gpu = cluster.gpu_free[nodes]
        inverse: IntArray | None = None
        if len(nodes) > self.DEDUPLICATE_ABOVE:
            # Untouched nodes of one model share a state: score each distinct state once.
            (free_cpu, free_memory, gpu), inverse = _distinct((free_cpu, free_memory, gpu))
        fits = (free_cpu >= pod.cpu_milli) & (free_memory >= pod.memory_mib)
        if pod.num_gpu:
            fits &= (gpu >= pod.per_gpu).sum(axis=1) >= pod.num_gpu
        result = np.full(len(fits), np.inf)
        rows = np.flatnonzero(fits)
        if len(rows):
            state = (free_cpu, free_memory, gpu)
            if len(rows) < len(fits):
                state = (free_cpu[rows], free_memory[rows], gpu[rows])
            after = bound_state(*state, pod)
            # One call over before and after rows: numpy's per-call cost dominates small sets.
            both = self.workload.fragmentation(
                *(np.concatenate([now, then]) for now, then in zip(state, after, strict=True))
            )
            result[rows] = both[len(rows) :] - both[: len(rows)]
        scores: FloatArray = result if inverse is None else result[inverse]
        # inf + anything stays inf: nodes without room need no mask here.
        scores += self.TIE_BREAK * self._leftover(cluster, pod, nodes)
        return scores

    def _leftover(self, cluster: Cluster, pod: GpuPod, nodes: IntArray) -> FloatArray:
        """Free share left after binding (pack: less is better); GPU nodes cost CPU-only pods."""
        if self._scales is None or self._scales[0] is not cluster:
            gpu_capacity = np.maximum(cluster.gpu_count * FULL_GPU, 1)
            self._scales = (
                cluster,
                1.0 / (3 * cluster.cpu_capacity),
                1.0 / (3 * cluster.memory_capacity),
                1.0 / (3 * gpu_capacity),
            )
        _, cpu_scale, memory_scale, gpu_scale = self._scales
        free_gpu = cluster.gpu_free[nodes].sum(axis=1)
        leftover: FloatArray = (
            (cluster.free_cpu[nodes] - pod.cpu_milli) * cpu_scale[nodes]
            + (cluster.free_memory[nodes] - pod.memory_mib) * memory_scale[nodes]
            + (free_gpu - pod.num_gpu * pod.per_gpu) * gpu_scale[nodes]
        )
        if not pod.num_gpu:
            leftover += free_gpu > 0
        return leftover


def replay(policy: SharingPolicy, cluster: Cluster, pods: list[GpuPod]) -> list[int | None]:
    """Place the pods one after the other, binding each; the chosen node per pod."""
    chosen: list[int | None] = []
    for pod in pods:
        node = policy.choose(cluster, pod)
        if node is not None:
            cluster.bind(node, pod)
        chosen.append(node)
    return chosen
