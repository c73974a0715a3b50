"""GPU-sharing placement over a whole cluster in numpy arrays, for the Alibaba openb replay.

Pods ask for CPU (milli-cores), memory and either a share of one GPU (``gpu_milli`` < 1000)
or whole GPUs. The contract's integer ``gpus`` cannot express shares, so this engine keeps
per-GPU free milli-GPUs itself. Fragmentation follows FGD (Weng et al., ATC'23): for a task
kind that cannot run on a node, all its free GPU is fragmented; for one that can, the GPUs
too small for it are; the node's score is the workload-weighted expectation. Needs numpy.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from novacron_sdk.errors import ConfigError

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
FULL_GPU = 1000


@dataclass(frozen=True)
class GpuPod:
    """One pod: CPU in milli-cores, memory in MiB, ``num_gpu`` GPUs of ``gpu_milli`` each."""

    name: str
    cpu_milli: int
    memory_mib: int
    num_gpu: int
    gpu_milli: int

    @property
    def per_gpu(self) -> int:
        """Milli-GPUs needed on each GPU it uses (0 for CPU-only pods)."""
        return 0 if self.num_gpu == 0 else min(self.gpu_milli or FULL_GPU, FULL_GPU)

    @property
    def kind(self) -> tuple[int, int, int, int]:
        """Pods of one kind are interchangeable for scoring."""
        return (self.cpu_milli, self.memory_mib, self.num_gpu, self.per_gpu)


@dataclass(frozen=True)
class GpuNode:
    """One node: CPU in milli-cores, memory in MiB, ``gpus`` whole GPUs."""

    name: str
    cpu_milli: int
    memory_mib: int
    gpus: int


def _rows(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle))
    except OSError as exc:
        msg = f"cannot read {path}: {exc.strerror}"
        raise ConfigError(msg) from exc


def read_nodes(path: Path) -> list[GpuNode]:
    """Nodes from an openb node list (``sn,cpu_milli,memory_mib,gpu,model``)."""
    return [
        GpuNode(r["sn"], int(r["cpu_milli"]), int(r["memory_mib"]), int(r["gpu"]))
        for r in _rows(path)
    ]


def read_pods(path: Path) -> list[GpuPod]:
    """Pods from an openb pod list, in creation order (ties keep file order)."""
    rows = sorted(enumerate(_rows(path)), key=lambda ir: (int(ir[1]["creation_time"]), ir[0]))
    return [
        GpuPod(
            r["name"],
            int(r["cpu_milli"]),
            int(r["memory_mib"]),
            int(r["num_gpu"]),
            int(r["gpu_milli"]),
        )
        for _, r in rows
    ]


class Workload:
    """The task kinds fragmentation is measured against, with their frequencies."""

    def __init__(self, pods: Sequence[GpuPod]) -> None:
        counts: dict[tuple[int, int, int, int], int] = {}
        for pod in pods:
            if pod.num_gpu:
                counts[pod.kind] = counts.get(pod.kind, 0) + 1
        self._set(counts)

    def compressed(self) -> Workload:
        """One kind per GPU shape, with the median CPU and memory of its pods.

        Fewer kinds make scoring several times cheaper; GPU shape is what drives fragmentation.
        """
        members: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
        for cpu, memory, gpus, per_gpu, weight in zip(
            self.cpu, self.memory, self.num_gpu, self.per_gpu, self.weight, strict=True
        ):
            count = round(float(weight) * self.total)
            members.setdefault((int(gpus), int(per_gpu)), []).append((int(cpu), int(memory), count))
        counts: dict[tuple[int, int, int, int], int] = {}
        for (gpus, per_gpu), rows in members.items():
            expanded_cpu = sorted(c for c, _, n in rows for _ in range(n))
            expanded_memory = sorted(m for _, m, n in rows for _ in range(n))
            middle = len(expanded_cpu) // 2
            key = (expanded_cpu[middle], expanded_memory[middle], gpus, per_gpu)
            counts[key] = counts.get(key, 0) + len(expanded_cpu)
        compact = Workload([])
        compact._set(counts)
        return compact

    def _set(self, counts: dict[tuple[int, int, int, int], int]) -> None:
        kinds = sorted(counts)
        self.total = sum(counts.values())
        total = self.total or 1
        self.cpu = np.array([k[0] for k in kinds], dtype=np.int64)
        self.memory = np.array([k[1] for k in kinds], dtype=np.int64)
        self.num_gpu = np.array([k[2] for k in kinds], dtype=np.int64)
        self.per_gpu = np.array([k[3] for k in kinds], dtype=np.int64)
        self.weight = np.array([counts[k] / total for k in kinds], dtype=np.float64)
        # Per-GPU demands repeat across kinds: test each distinct one against the GPUs once.
        self.thresholds, self.threshold_of = np.unique(self.per_gpu, return_inverse=True)

    def fragmentation(
        self, free_cpu: IntArray, free_memory: IntArray, gpu_free: IntArray
    ) -> FloatArray:
        """Expected fragmented milli-GPUs of each node state (rows of free milli-GPUs per GPU)."""
        total = gpu_free.sum(axis=1)
        fits_gpu = gpu_free[:, :, None] >= self.thresholds[None, None, :]
        usable = fits_gpu.sum(axis=1)[:, self.threshold_of]
        too_small = (gpu_free[:, :, None] * ~fits_gpu).sum(axis=1)[:, self.threshold_of]
        feasible = (
            (free_cpu[:, None] >= self.cpu[None, :])
            & (free_memory[:, None] >= self.memory[None, :])
            & (usable >= self.num_gpu[None, :])
        )
        stranded = np.where(feasible, too_small, total[:, None])
        result: FloatArray = stranded @ self.weight
        return result


class Cluster:
    """Free resources of every node, updated as pods are bound."""

    def __init__(self, nodes: Sequence[GpuNode]) -> None:
        if not nodes:
            msg = "the cluster has no nodes"
            raise ConfigError(msg)
        width = max(*(n.gpus for n in nodes), 1)
        self.nodes = list(nodes)
        self.cpu_capacity = np.array([n.cpu_milli for n in nodes], dtype=np.int64)
        self.memory_capacity = np.array([n.memory_mib for n in nodes], dtype=np.int64)
        self.gpu_count = np.array([n.gpus for n in nodes], dtype=np.int64)
        self.free_cpu = self.cpu_capacity.copy()
        self.free_memory = self.memory_capacity.copy()
        # Padding columns of nodes with fewer GPUs hold 0, like a fully used GPU: every pod that
        # asks for GPUs needs at least 1 milli-GPU, so neither can ever be chosen or counted.
        self.gpu_free = np.zeros((len(nodes), width), dtype=np.int64)
        for i, node in enumerate(nodes):
            self.gpu_free[i, : node.gpus] = FULL_GPU
        self.version = np.zeros(len(nodes), dtype=np.int64)

    @property
    def gpu_capacity_milli(self) -> int:
        """Total milli-GPUs of the cluster."""
        return int(self.gpu_count.sum()) * FULL_GPU

    def feasible(self, pod: GpuPod) -> npt.NDArray[np.bool_]:
        """Nodes with room for the pod."""
        ok = (self.free_cpu >= pod.cpu_milli) & (self.free_memory >= pod.memory_mib)
        if pod.num_gpu:
            ok &= (self.gpu_free >= pod.per_gpu).sum(axis=1) >= pod.num_gpu
        return ok

    def after(self, nodes: IntArray, pod: GpuPod) -> tuple[IntArray, IntArray, IntArray]:
        """Free CPU, memory and per-GPU state of ``nodes`` if the pod were bound there."""
        return bound_state(self.free_cpu[nodes], self.free_memory[nodes], self.gpu_free[nodes], pod)

    def bind(self, node: int, pod: GpuPod) -> None:
        """Bind the pod to ``node`` (best-fit GPUs, as :func:`bound_state`); it must have room."""
        self.free_cpu[node] -= pod.cpu_milli
        self.free_memory[node] -= pod.memory_mib
        if pod.num_gpu:
            # Plain Python: for one row of at most a few GPUs it beats numpy's call overhead.
            row = self.gpu_free[node].tolist()
            order = sorted(
                (free - pod.per_gpu, index) for index, free in enumerate(row) if free >= pod.per_gpu
            )
            for _, index in order[: pod.num_gpu]:
                self.gpu_free[node, index] -= pod.per_gpu
        self.version[node] += 1

    def fragmented_share(self, workload: Workload) -> float:
        """Share of the cluster's GPU capacity that the workload could not use right now."""
        frag = workload.fragmentation(self.free_cpu, self.free_memory, self.gpu_free)
        return float(frag.sum()) / max(self.gpu_capacity_milli, 1)

    def allocated_share(self) -> float:
        """Share of the cluster's GPU capacity bound to pods."""
        free = int(self.gpu_free.sum())
        return 1.0 - free / max(self.gpu_capacity_milli, 1)


def bound_state(
    free_cpu: IntArray, free_memory: IntArray, gpu: IntArray, pod: GpuPod
) -> tuple[IntArray, IntArray, IntArray]:
    """Node states after binding ``pod`` (rows must have room).

    GPUs are chosen best-fit: the fullest GPUs that still have room for the pod.
    """
    gpu = gpu.copy()
    if pod.num_gpu:
        slack = np.where(gpu >= pod.per_gpu, gpu - pod.per_gpu, FULL_GPU + 1)
        rows = np.arange(len(gpu))
        if pod.num_gpu == 1:
            gpu[rows, np.argmin(slack, axis=1)] -= pod.per_gpu
        else:
            chosen = np.argsort(slack, axis=1, kind="stable")[:, : pod.num_gpu]
            gpu[rows[:, None], chosen] -= pod.per_gpu
    return free_cpu - pod.cpu_milli, free_memory - pod.memory_mib, gpu
