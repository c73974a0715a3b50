"""First-fit placement and the placement service: the contract suite plus ordering rules."""

from __future__ import annotations

from typing import Any

import pytest

from novacron_sdk.builtin.first_fit import FirstFitPolicy
from novacron_sdk.errors import ConfigError, UnknownNameError
from novacron_sdk.placement.interface import HostUsage, PlacementPolicy, PlacementRequest
from novacron_sdk.placement.service import place
from novacron_sdk.plugin import hookimpl
from novacron_sdk.plugin.manager import build_plugin_manager
from novacron_sdk.testing.placement import PlacementContract, host


class TestFirstFitContract(PlacementContract):
    @pytest.fixture
    def policy(self) -> PlacementPolicy:
        return FirstFitPolicy()


def test_first_accepted_host_in_the_given_order_wins() -> None:
    hosts = [host("c", vcpus=1), host("b"), host("a"), host("d"), host("e")]
    decision = FirstFitPolicy().place(PlacementRequest(name="vm", vcpus=2), hosts)
    assert decision.host_id == "b"
    assert decision.alternates == ["a", "d"]
    assert decision.rejected == {"c": "needs 2 vCPUs, 1 free"}


def test_alternates_setting() -> None:
    hosts = [host(f"h{i}") for i in range(6)]
    decision = FirstFitPolicy({"alternates": 4}).place(PlacementRequest(name="vm"), hosts)
    assert decision.alternates == ["h1", "h2", "h3", "h4"]
    assert (
        FirstFitPolicy({"alternates": 0}).place(PlacementRequest(name="vm"), hosts).alternates == []
    )


def test_filters_apply_in_documented_order() -> None:
    # Excluded and mislabelled hosts are reported for that, not for their (also lacking) capacity.
    hosts = [
        host("x", vcpus=1),
        host("y", vcpus=1, labels={"zone": "b"}),
        host("z", vcpus=1, labels={"zone": "a"}),
    ]
    request = PlacementRequest(
        name="vm", vcpus=4, exclude_hosts=["x"], required_labels={"zone": "a"}
    )
    rejected = FirstFitPolicy().place(request, hosts).rejected
    assert rejected["x"] == "excluded by the request"
    assert rejected["y"] == "label zone=a required, host has zone=b"
    assert rejected["z"] == "needs 4 vCPUs, 1 free"


@pytest.mark.parametrize(
    ("request_kwargs", "usage_kwargs", "reason"),
    [
        (
            {"memory_mib": 4096},
            {"memory_mib": 8192, "used_memory_mib": 6144},
            "needs 4096 MiB of memory, 2048 free",
        ),
        ({"gpus": 1}, {}, "needs 1 GPUs, 0 free"),
        ({"disk_gib": 50}, {"disk_gib": 100, "used_disk_gib": 60}, "needs 50 GiB of disk, 40 free"),
    ],
)
def test_capacity_reasons(
    request_kwargs: dict[str, int], usage_kwargs: dict[str, Any], reason: str
) -> None:
    decision = FirstFitPolicy().place(
        PlacementRequest(name="vm", **request_kwargs), [host("h", **usage_kwargs)]
    )
    assert decision.rejected == {"h": reason}


def test_affinity_keeps_to_hosts_of_the_group() -> None:
    with_group = host("b").model_copy(update={"groups": {"web": 2}})
    decision = FirstFitPolicy().place(
        PlacementRequest(name="web-3", affinity_group="web"), [host("a"), with_group]
    )
    assert decision.host_id == "b"
    assert "affinity group 'web'" in decision.rejected["a"]


def test_affinity_with_no_member_yet_accepts_any_host() -> None:
    decision = FirstFitPolicy().place(
        PlacementRequest(name="web-1", affinity_group="web"), [host("a"), host("b")]
    )
    assert decision.host_id == "a"


def test_affinity_batch_packs_onto_one_host() -> None:
    requests = [PlacementRequest(name=f"w{i}", affinity_group="web") for i in range(3)]
    decisions = FirstFitPolicy().place_batch(requests, [host("a"), host("b")])
    assert [d.host_id for d in decisions] == ["a", "a", "a"]


def test_bad_alternates_setting() -> None:
    with pytest.raises(ConfigError, match="alternates"):
        FirstFitPolicy({"alternates": -1})


class RejectOddHosts:
    """A plugin that vetoes hosts whose id ends in an odd digit."""

    @hookimpl
    def novacron_filter_host(self, request: PlacementRequest, host: HostUsage) -> str | None:
        return "odd host" if int(host.host.id[-1]) % 2 else None


def test_service_applies_plugin_filters_then_policy() -> None:
    plugins = build_plugin_manager(autoload=False, plugins=[("odd", RejectOddHosts())])
    hosts = [host("h1"), host("h2", vcpus=1), host("h3"), host("h4")]
    decision = place(plugins, PlacementRequest(name="vm", vcpus=2), hosts)
    assert decision.host_id == "h4"
    assert decision.policy == "first-fit"
    assert decision.rejected == {
        "h1": "rejected by a plugin filter: odd host",
        "h3": "rejected by a plugin filter: odd host",
        "h2": "needs 2 vCPUs, 1 free",
    }


def test_service_without_plugin_filters_uses_the_default_policy() -> None:
    plugins = build_plugin_manager(autoload=False)
    assert plugins.placement.default_name() == "first-fit"
    decision = place(plugins, PlacementRequest(name="vm"), [host("a"), host("b")])
    assert (decision.host_id, decision.rejected) == ("a", {})


def test_service_unknown_policy_names_the_known_ones() -> None:
    with pytest.raises(UnknownNameError, match="first-fit"):
        place(
            build_plugin_manager(autoload=False),
            PlacementRequest(name="vm"),
            [host("a")],
            policy="best-fit",
        )
