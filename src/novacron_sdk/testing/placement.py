"""The contract every placement policy must pass: subclass :class:`PlacementContract`.

Example::

    class TestFirstFitContract(PlacementContract):
        @pytest.fixture
        def policy(self) -> PlacementPolicy:
            return FirstFitPolicy()
"""

from __future__ import annotations

import random

from novacron_sdk.models import Host
from novacron_sdk.placement.interface import HostUsage, PlacementPolicy, PlacementRequest


def host(
    host_id: str,
    *,
    vcpus: int = 16,
    memory_mib: int = 32768,
    gpus: int = 0,
    disk_gib: int = 500,
    labels: dict[str, str] | None = None,
    **used: int,
) -> HostUsage:
    """A host with capacity and what is already ``used_*`` on it (``groups`` via model_copy)."""
    return HostUsage(
        host=Host(
            id=host_id,
            name=host_id,
            driver="sim",
            vcpus=vcpus,
            memory_mib=memory_mib,
            gpus=gpus,
            disk_gib=disk_gib,
            labels=labels or {},
        ),
        **used,
    )


class PlacementContract:
    """Every placement policy must pass this. Subclass it and provide a ``policy`` fixture."""

    def test_capacity_is_respected(self, policy: PlacementPolicy) -> None:
        """The chosen host has room for every resource; hosts without room say why."""
        hosts = [
            host("small-cpu", vcpus=2),
            host("busy-memory", memory_mib=8192, used_memory_mib=6000),
            host("no-gpu"),
            host("full-disk", gpus=2, disk_gib=100, used_disk_gib=90),
            host("fits", gpus=2, vcpus=8),
        ]
        request = PlacementRequest(name="vm", vcpus=4, memory_mib=4096, gpus=1, disk_gib=20)
        decision = policy.place(request, hosts)
        assert decision.host_id == "fits"
        for bad in ("small-cpu", "busy-memory", "no-gpu", "full-disk"):
            assert decision.rejected.get(bad), f"{bad} rejected without a reason"
        assert decision.request == "vm"
        assert decision.policy == type(policy).name

    def test_nothing_fits(self, policy: PlacementPolicy) -> None:
        """No host fits: host_id is None and every host has a reason."""
        hosts = [host(f"h{i}", vcpus=2) for i in range(4)]
        decision = policy.place(PlacementRequest(name="big", vcpus=8), hosts)
        assert decision.host_id is None
        assert decision.alternates == []
        assert set(decision.rejected) == {f"h{i}" for i in range(4)}
        assert all(reason.strip() for reason in decision.rejected.values())

    def test_no_hosts(self, policy: PlacementPolicy) -> None:
        """An empty host list gives no host and no error."""
        decision = policy.place(PlacementRequest(name="vm"), [])
        assert decision.host_id is None

    def test_anti_affinity(self, policy: PlacementPolicy) -> None:
        """A host already running a VM of the anti-affinity group is not chosen."""
        taken = host("a").model_copy(update={"groups": {"db": 1}})
        decision = policy.place(
            PlacementRequest(name="db-2", anti_affinity_group="db"), [taken, host("b")]
        )
        assert decision.host_id == "b"
        assert "a" in decision.rejected

    def test_exclude_hosts(self, policy: PlacementPolicy) -> None:
        """Hosts the request excludes are never chosen."""
        decision = policy.place(
            PlacementRequest(name="vm", exclude_hosts=["a"]), [host("a"), host("b")]
        )
        assert decision.host_id == "b"
        assert "a" in decision.rejected

    def test_required_labels(self, policy: PlacementPolicy) -> None:
        """Only hosts carrying every required label qualify."""
        hosts = [host("plain"), host("ssd", labels={"disk": "ssd", "zone": "a"})]
        decision = policy.place(PlacementRequest(name="vm", required_labels={"disk": "ssd"}), hosts)
        assert decision.host_id == "ssd"

    def test_alternates_are_other_accepted_hosts(self, policy: PlacementPolicy) -> None:
        """Alternates fit too, differ from the choice and from each other."""
        hosts = [host(f"h{i}") for i in range(5)] + [host("tiny", vcpus=1)]
        decision = policy.place(PlacementRequest(name="vm", vcpus=2), hosts)
        assert decision.host_id is not None
        assert decision.host_id not in decision.alternates
        assert len(set(decision.alternates)) == len(decision.alternates)
        assert "tiny" not in decision.alternates

    def test_batch_never_overcommits(self, policy: PlacementPolicy) -> None:
        """Placing a batch counts every placed VM: no host ends up over capacity."""
        rng = random.Random(4)
        hosts = [host(f"h{i}", vcpus=8, memory_mib=16384) for i in range(3)]
        requests = [
            PlacementRequest(
                name=f"vm{i}", vcpus=rng.randint(1, 4), memory_mib=rng.choice((1024, 2048, 4096))
            )
            for i in range(30)
        ]
        decisions = policy.place_batch(requests, hosts)
        assert [d.request for d in decisions] == [r.name for r in requests]
        used: dict[str, list[int]] = {h.host.id: [0, 0] for h in hosts}
        for request, decision in zip(requests, decisions, strict=True):
            if decision.host_id is not None:
                used[decision.host_id][0] += request.vcpus
                used[decision.host_id][1] += request.memory_mib
        assert any(d.host_id is not None for d in decisions)
        assert any(d.host_id is None for d in decisions)  # 30 VMs cannot all fit
        for vcpus, memory in used.values():
            assert vcpus <= 8
            assert memory <= 16384

    def test_batch_anti_affinity_spreads(self, policy: PlacementPolicy) -> None:
        """Members of one anti-affinity group placed in a batch land on different hosts."""
        hosts = [host(f"h{i}") for i in range(3)]
        requests = [PlacementRequest(name=f"r{i}", anti_affinity_group="g") for i in range(4)]
        decisions = policy.place_batch(requests, hosts)
        placed = [d.host_id for d in decisions if d.host_id is not None]
        assert len(placed) == 3
        assert len(set(placed)) == 3
        assert decisions[3].host_id is None
