"""Place VMs with the Nova-style scheduler, explain a refusal, and consolidate a batch.

Run it with ``python examples/placement.py``. The batch part uses CP-SAT when OR-tools is
installed (``pip install 'novacron-dwcp[cpsat]'``) and best-fit decreasing otherwise.
"""

from __future__ import annotations

from novacron_dwcp.placement.batch import solve_batch
from novacron_dwcp.placement.scheduler import NovaScheduler, explain
from novacron_sdk.models import Host
from novacron_sdk.placement.interface import HostUsage, PlacementRequest


def host(host_id: str, vcpus: int, memory_gib: int, gpus: int = 0, **labels: str) -> HostUsage:
    """An empty host."""
    return HostUsage(
        host=Host(
            id=host_id,
            name=host_id,
            driver="example",
            vcpus=vcpus,
            memory_mib=memory_gib * 1024,
            gpus=gpus,
            labels=labels,
        )
    )


def main() -> None:
    """One request at a time, then a batch on as few hosts as possible."""
    hosts = [
        host("cpu-1", 32, 128, zone="a"),
        host("cpu-2", 32, 128, zone="b"),
        host("gpu-1", 64, 512, gpus=8, zone="a"),
    ]
    scheduler = NovaScheduler({"alternates": 1})
    requests = [
        PlacementRequest(name="db-1", vcpus=8, memory_mib=32768, anti_affinity_group="db"),
        PlacementRequest(name="db-2", vcpus=8, memory_mib=32768, anti_affinity_group="db"),
        PlacementRequest(name="trainer", vcpus=16, memory_mib=65536, gpus=4),
        PlacementRequest(name="web", vcpus=2, required_labels={"zone": "b"}),
        PlacementRequest(name="huge", vcpus=128),
    ]
    for decision in scheduler.place_batch(requests, hosts):
        spare = f" (alternates: {', '.join(decision.alternates)})" if decision.alternates else ""
        print(explain(decision) + spare)

    small = [host(f"node-{i}", 16, 64) for i in range(10)]
    batch = [
        PlacementRequest(name=f"vm-{i}", vcpus=(1, 2, 4, 8)[i % 4], memory_mib=4096)
        for i in range(24)
    ]
    result = solve_batch(batch, small, time_limit_s=5)
    print(
        f"\nbatch of {len(batch)} VMs: {result.hosts_used} hosts used, lower bound "
        f"{result.lower_bound} ({result.solver}, {result.status})"
    )
    for note in result.notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
