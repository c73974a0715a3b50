"""Nova-style weighers: raw per-host values, normalized to [0, 1] across hosts, times multipliers.

A positive multiplier prefers hosts with more of the quantity, a negative one fewer; with the
defaults, RAM spreads and GPU fragmentation is avoided.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from novacron_sdk.errors import ConfigError
from novacron_sdk.placement.interface import HostUsage, PlacementRequest

Weigher = Callable[[PlacementRequest, HostUsage], float]


@dataclass(frozen=True)
class GpuTask:
    """One kind of GPU request in the workload that GPU fragmentation is measured against."""

    gpus: int
    vcpus: int
    memory_mib: int
    weight: float = 1.0


DEFAULT_GPU_WORKLOAD = (
    GpuTask(1, 4, 16_384, 4.0),
    GpuTask(2, 8, 32_768, 2.0),
    GpuTask(4, 16, 65_536, 1.0),
    GpuTask(8, 32, 131_072, 1.0),
)
"""Assumed GPU demand when settings give none: mostly single GPUs, some multi-GPU jobs."""


def ram(request: PlacementRequest, host: HostUsage) -> float:
    """Free memory after placement (Nova's RAMWeigher)."""
    return float(host.free_memory_mib - request.memory_mib)


def cpu(request: PlacementRequest, host: HostUsage) -> float:
    """Free vCPUs after placement (Nova's CPUWeigher)."""
    return float(host.free_vcpus - request.vcpus)


def spread(request: PlacementRequest, host: HostUsage) -> float:
    """Unused share of the host after placement: positive multiplier spreads, negative packs."""
    h = host.host
    cpu_share = (host.used_vcpus + request.vcpus) / h.vcpus if h.vcpus else 1.0
    memory_share = (
        (host.used_memory_mib + request.memory_mib) / h.memory_mib if h.memory_mib else 1.0
    )
    return 1.0 - (cpu_share + memory_share) / 2


def gpu_fragmentation(
    vcpus: int, memory_mib: int, free_gpus: int, workload: Sequence[GpuTask]
) -> float:
    """Expected free GPUs a task from ``workload`` could not use on a host in this state.

    The FGD measure (Weng et al., ATC'23) for whole GPUs: when a task does not fit (too few
    GPUs, vCPUs or memory), every free GPU of the host counts as fragmented for it.
    """
    total = sum(t.weight for t in workload) or 1.0
    stranded = 0.0
    for task in workload:
        if task.gpus > free_gpus or task.vcpus > vcpus or task.memory_mib > memory_mib:
            stranded += task.weight * free_gpus
    return stranded / total


GPU_HOST_PENALTY = 1e-3
"""Raw penalty of a GPU host with free GPUs for a request without GPUs.

It only decides when fragmentation ties: weights are normalized across hosts, so any
difference matters. Like Nova's PCIWeigher, it keeps VMs that need no GPU off GPU hosts.
"""


def make_gpu_fragmentation_weigher(workload: Sequence[GpuTask]) -> Weigher:
    """A weigher scoring minus the fragmentation the placement adds (FGD's gradient)."""

    def weigh(request: PlacementRequest, host: HostUsage) -> float:
        free_gpus = host.host.gpus - host.used_gpus
        if not host.host.gpus:
            return 0.0
        penalty = GPU_HOST_PENALTY if free_gpus > 0 and request.gpus == 0 else 0.0
        before = gpu_fragmentation(host.free_vcpus, host.free_memory_mib, free_gpus, workload)
        after = gpu_fragmentation(
            host.free_vcpus - request.vcpus,
            host.free_memory_mib - request.memory_mib,
            free_gpus - request.gpus,
            workload,
        )
        return before - after - penalty

    return weigh


DEFAULT_MULTIPLIERS = {"ram": 1.0, "cpu": 0.0, "spread": 0.0, "gpu_fragmentation": 2.0}


def parse_workload(raw: object) -> tuple[GpuTask, ...]:
    """The ``gpu_workload`` setting: a list of {gpus, vcpus, memory_mib, weight} mappings."""
    if raw is None:
        return DEFAULT_GPU_WORKLOAD
    if not isinstance(raw, list | tuple):
        msg = "placement setting 'gpu_workload' must be a list of {gpus, vcpus, memory_mib, weight}"
        raise ConfigError(msg)
    try:
        return tuple(GpuTask(**item) for item in raw)
    except TypeError as exc:
        msg = f"placement setting 'gpu_workload' has an invalid entry: {exc}"
        raise ConfigError(msg) from exc


def build_weighers(settings: Mapping[str, object]) -> list[tuple[float, Weigher]]:
    """(multiplier, weigher) pairs from the ``weights`` and ``gpu_workload`` settings."""
    raw = settings.get("weights", {})
    if not isinstance(raw, Mapping):
        msg = "placement setting 'weights' must map weigher names to multipliers"
        raise ConfigError(msg)
    unknown = set(raw) - set(DEFAULT_MULTIPLIERS)
    if unknown:
        msg = (
            f"unknown weigher(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(DEFAULT_MULTIPLIERS)}"
        )
        raise ConfigError(msg)
    multipliers = {**DEFAULT_MULTIPLIERS, **raw}
    weighers: dict[str, Weigher] = {
        "ram": ram,
        "cpu": cpu,
        "spread": spread,
        "gpu_fragmentation": make_gpu_fragmentation_weigher(
            parse_workload(settings.get("gpu_workload"))
        ),
    }
    return [(float(m), weighers[name]) for name, m in multipliers.items() if m]


def normalize(values: Sequence[float]) -> list[float]:
    """Min-max to [0, 1], as Nova does; all-equal values weigh 0."""
    low, high = min(values), max(values)
    if high == low:
        return [0.0] * len(values)
    return [(v - low) / (high - low) for v in values]
