"""The Nova-style scheduler: every filter, every weigher, affinity rules, alternates, reasons."""

from __future__ import annotations

import argparse
import json

import pytest

from novacron_dwcp.placement import hooks
from novacron_dwcp.placement.cli import COMMAND
from novacron_dwcp.placement.filters import (
    FilterContext,
    affinity,
    anti_affinity,
    capacity,
    excluded,
    labels,
    max_instances,
)
from novacron_dwcp.placement.scheduler import (
    FragmentationAwareScheduler,
    NoValidHostError,
    NovaScheduler,
    explain,
    require_host,
)
from novacron_dwcp.placement.weighers import GpuTask, gpu_fragmentation
from novacron_sdk.errors import ConfigError
from novacron_sdk.placement.interface import PlacementRequest
from novacron_sdk.plugin.registry import Registry
from novacron_sdk.testing.placement import host

# --- filters --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_fields", "host_fields", "fragment"),
    [
        ({"vcpus": 5}, {"vcpus": 8, "used_vcpus": 4}, "vCPUs"),
        ({"memory_mib": 4096}, {"memory_mib": 8192, "used_memory_mib": 5000}, "memory"),
        ({"gpus": 2}, {"gpus": 2, "used_gpus": 1}, "GPUs"),
        ({"disk_gib": 50}, {"disk_gib": 100, "used_disk_gib": 60}, "disk"),
    ],
)
def test_capacity_filter_rejects_each_short_resource(request_fields, host_fields, fragment):
    reason = capacity(PlacementRequest(name="vm", **request_fields), host("h", **host_fields))
    assert reason is not None
    assert fragment in reason


def test_capacity_filter_accepts_an_exact_fit_and_untracked_disk():
    exact = host("h", vcpus=4, memory_mib=4096, gpus=1, used_vcpus=2, used_memory_mib=2048)
    request = PlacementRequest(name="vm", vcpus=2, memory_mib=2048, gpus=1, disk_gib=10)
    assert capacity(request, exact) is None
    assert capacity(PlacementRequest(name="vm", disk_gib=10**6), host("h", disk_gib=0)) is None


def test_label_filter_and_aggregates():
    request = PlacementRequest(name="vm", required_labels={"zone": "a", "aggregate": "gpu-pool"})
    in_pool = host("h", labels={"zone": "a"})
    in_pool.host.extra["aggregates"] = ["gpu-pool"]
    assert labels(request, in_pool) is None
    assert "zone=a" in labels(request, host("h", labels={"zone": "b"}))
    assert "aggregate" in labels(request, host("h", labels={"zone": "a"}))
    labelled = host("h", labels={"zone": "a", "aggregate": "gpu-pool"})
    assert labels(request, labelled) is None


def test_anti_affinity_filter():
    request = PlacementRequest(name="vm", anti_affinity_group="db")
    assert anti_affinity(request, host("a").model_copy(update={"groups": {"db": 1}}))
    assert anti_affinity(request, host("b").model_copy(update={"groups": {"web": 3}})) is None


def test_affinity_follows_the_group_once_it_has_members():
    request = PlacementRequest(name="vm", affinity_group="cache")
    holder = host("a").model_copy(update={"groups": {"cache": 2}})
    other = host("b")
    context = FilterContext.build(request, [holder, other])
    assert affinity(request, holder, context) is None
    assert "cache" in affinity(request, other, context)
    empty_context = FilterContext.build(request, [host("c"), other])
    assert affinity(request, other, empty_context) is None


def test_max_instances_from_settings_and_host_extra():
    busy = host("h", instances=3)
    assert max_instances(busy, FilterContext(max_instances_per_host=3))
    assert max_instances(busy, FilterContext(max_instances_per_host=4)) is None
    busy.host.extra["max_instances"] = 10
    assert max_instances(busy, FilterContext(max_instances_per_host=3)) is None


def test_exclude_filter():
    request = PlacementRequest(name="vm", exclude_hosts=["src"])
    assert excluded(request, host("src"))
    assert excluded(request, host("dst")) is None


def test_extra_filters_run_after_the_builtin_ones():
    def no_odd_hosts(request, usage):
        return "odd host" if usage.host.id.endswith(("1", "3")) else None

    scheduler = NovaScheduler({"extra_filters": [no_odd_hosts]})
    decision = scheduler.place(PlacementRequest(name="vm"), [host(f"h{i}") for i in range(4)])
    assert decision.rejected == {"h1": "odd host", "h3": "odd host"}
    assert decision.host_id in ("h0", "h2")


# --- scheduler and weighers -----------------------------------------------------------------


def test_affinity_group_members_land_together_in_a_batch():
    hosts = [host(f"h{i}") for i in range(4)]
    requests = [PlacementRequest(name=f"c{i}", affinity_group="cache") for i in range(3)]
    decisions = NovaScheduler().place_batch(requests, hosts)
    assert len({d.host_id for d in decisions}) == 1


def test_ram_weigher_spreads_with_a_positive_multiplier_and_packs_with_a_negative_one():
    hosts = [
        host("empty"),
        host("half", used_memory_mib=16384),
        host("full", used_memory_mib=30000),
    ]
    request = PlacementRequest(name="vm", memory_mib=1024)
    only_ram = {"cpu": 0, "spread": 0, "gpu_fragmentation": 0}
    spread = NovaScheduler({"weights": {**only_ram, "ram": 1.0}}).place(request, hosts)
    pack = NovaScheduler({"weights": {**only_ram, "ram": -1.0}}).place(request, hosts)
    assert spread.host_id == "empty"
    assert pack.host_id == "full"


def test_cpu_weigher():
    hosts = [host("busy", used_vcpus=12), host("idle")]
    request = PlacementRequest(name="vm", vcpus=1)
    weights = {"ram": 0, "cpu": 1.0, "gpu_fragmentation": 0}
    assert NovaScheduler({"weights": weights}).place(request, hosts).host_id == "idle"
    weights["cpu"] = -1.0
    assert NovaScheduler({"weights": weights}).place(request, hosts).host_id == "busy"


def test_spread_weigher_counts_cpu_and_memory_shares():
    hosts = [host("cpu-heavy", used_vcpus=14), host("light", used_vcpus=2)]
    request = PlacementRequest(name="vm")
    weights = {"ram": 0, "spread": 1.0, "gpu_fragmentation": 0}
    assert NovaScheduler({"weights": weights}).place(request, hosts).host_id == "light"
    weights["spread"] = -1.0
    assert NovaScheduler({"weights": weights}).place(request, hosts).host_id == "cpu-heavy"


def test_gpu_fragmentation_measure():
    workload = [GpuTask(1, 1, 1, 1.0), GpuTask(4, 1, 1, 1.0)]
    # 2 free GPUs: the 1-GPU task fits, the 4-GPU task strands both: (0 + 2) / 2.
    assert gpu_fragmentation(8, 1024, 2, workload) == pytest.approx(1.0)
    # No CPU left: both tasks are stranded.
    assert gpu_fragmentation(0, 1024, 2, workload) == pytest.approx(2.0)
    assert gpu_fragmentation(8, 1024, 0, workload) == 0.0


def test_gpu_fragmentation_weigher_keeps_cpu_vms_off_gpu_hosts_and_fills_partial_gpu_hosts():
    hosts = [host("gpu", gpus=4, vcpus=8), host("cpu", vcpus=8)]
    cpu_vm = PlacementRequest(name="web", vcpus=8)
    assert NovaScheduler().place(cpu_vm, hosts).host_id == "cpu"
    partial = [host("fresh", gpus=8, vcpus=64), host("one-left", gpus=8, vcpus=64, used_gpus=7)]
    gpu_vm = PlacementRequest(name="train", gpus=1, vcpus=4, memory_mib=4096)
    assert FragmentationAwareScheduler().place(gpu_vm, partial).host_id == "one-left"


def test_cpu_only_vms_avoid_gpu_hosts_even_when_fragmentation_ties():
    # Plenty of room either way: the fragmentation gradient is 0 on both hosts, and the
    # bigger GPU host would win on free RAM alone.
    hosts = [host("gpu", gpus=8, vcpus=128, memory_mib=1 << 20), host("cpu", vcpus=32)]
    decision = NovaScheduler().place(PlacementRequest(name="db", vcpus=2), hosts)
    assert decision.host_id == "cpu"
    ram_only = NovaScheduler({"weights": {"gpu_fragmentation": 0}})
    assert ram_only.place(PlacementRequest(name="db", vcpus=2), hosts).host_id == "gpu"


def test_alternates_follow_the_ranking_and_their_count_is_a_setting():
    hosts = [host(f"h{i}", used_memory_mib=1000 * i) for i in range(6)]
    decision = NovaScheduler({"alternates": 3}).place(PlacementRequest(name="vm"), hosts)
    assert decision.host_id == "h0"
    assert decision.alternates == ["h1", "h2", "h3"]
    assert (
        NovaScheduler({"alternates": 0}).place(PlacementRequest(name="vm"), hosts).alternates == []
    )


def test_a_grouped_reason_shows_each_hosts_figures_as_a_range():
    """Hosts with 2, 3 and 4 free vCPUs for an 8-vCPU request: the grouped reason used to
    print the first host's figures for all three ("needs 8 vCPUs, 2 free")."""
    hosts = [host("h2", vcpus=2), host("h3", vcpus=3), host("h4", vcpus=4), host("h4b", vcpus=4)]
    message = explain(NovaScheduler().place(PlacementRequest(name="big", vcpus=8), hosts))
    assert "4 host(s): needs 8 vCPUs, 2-4 free" in message
    same = [host(f"s{i}", vcpus=2) for i in range(3)]
    message = explain(NovaScheduler().place(PlacementRequest(name="big", vcpus=8), same))
    assert "3 host(s): needs 8 vCPUs, 2 free" in message


def test_infeasible_request_gets_a_grouped_reason():
    hosts = [host(f"small{i}", vcpus=2) for i in range(3)] + [host("src")]
    request = PlacementRequest(name="big", vcpus=4, exclude_hosts=["src"])
    decision = NovaScheduler().place(request, hosts)
    message = explain(decision)
    assert "no host fits big" in message
    assert "3 host(s): needs 4 vCPUs, 2 free" in message
    assert "1 host(s): excluded by the request" in message
    with pytest.raises(NoValidHostError, match="relax the request"):
        require_host(decision)


@pytest.mark.parametrize(
    "settings",
    [{"weights": {"disk": 1.0}}, {"weights": [1]}, {"alternates": -1}, {"gpu_workload": 3}],
)
def test_bad_settings_are_config_errors(settings):
    with pytest.raises(ConfigError):
        NovaScheduler(settings)


def test_hooks_register_lazy_references_that_resolve():
    registry = Registry("placement policy")
    hooks.novacron_register_placement_policies(registry)
    assert all(isinstance(e.target, str) for e in registry.entries())
    for name in registry.names():
        assert registry.get(name).name == name


# --- novacron place -------------------------------------------------------------------------


def run_place(argv):
    parser = argparse.ArgumentParser()
    COMMAND.configure(parser)
    return COMMAND.run(parser.parse_args(argv))


CLUSTER = """
hosts:
  - {id: a, vcpus: 8, memory_mib: 16384}
  - {id: b, vcpus: 8, memory_mib: 16384, used_vcpus: 6, instances: 1}
requests:
  - {name: web-1, vcpus: 2, anti_affinity_group: web}
  - {name: web-2, vcpus: 2, anti_affinity_group: web}
  - {name: huge, vcpus: 64}
"""


def test_place_command_prints_the_assignment_and_why_a_vm_did_not_fit(tmp_path, capsys):
    path = tmp_path / "cluster.yaml"
    path.write_text(CLUSTER)
    assert run_place(["--cluster", str(path)]) == 3
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert lines["web-1"].split()[1] in ("a", "b")
    assert lines["web-2"].split()[1] in ("a", "b")
    assert lines["web-1"].split()[1] != lines["web-2"].split()[1]
    assert "needs 64 vCPUs" in lines["huge"]


def test_place_command_batch_json(tmp_path, capsys):
    cluster = tmp_path / "hosts.json"
    cluster.write_text(
        json.dumps({"hosts": [{"id": f"h{i}", "vcpus": 4, "memory_mib": 8192} for i in range(4)]})
    )
    requests = tmp_path / "requests.yaml"
    requests.write_text(
        "requests:\n" + "".join(f"  - {{name: v{i}, vcpus: 2}}\n" for i in range(4))
    )
    assert (
        run_place(
            [
                "--cluster",
                str(cluster),
                "--requests",
                str(requests),
                "--batch",
                "--json",
                "--time-limit",
                "2",
            ]
        )
        == 0
    )
    decisions = json.loads(capsys.readouterr().out)
    assert len({d["host_id"] for d in decisions}) == 2
    command = ["--cluster", str(cluster), "--requests", str(requests), "--batch"]
    assert run_place([*command, "--time-limit", "2"]) == 0
    assert "2 host(s) used (hosts already running VMs count)" in capsys.readouterr().out


def test_place_command_reports_a_bad_file(tmp_path, capsys):
    path = tmp_path / "cluster.yaml"
    path.write_text("hosts:\n  - {id: a, vcpus: lots, memory_mib: 1}\nrequests: []\n")
    assert run_place(["--cluster", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"error: novacron place: {path}: hosts[0]: vcpus: input should be a valid integer, "
        "unable to parse string as an integer (got 'lots')\n"
    )


def test_place_command_lists_each_problem_without_pydantic_dumps(tmp_path, capsys):
    path = tmp_path / "cluster.yaml"
    path.write_text("hosts: [{id: h1, vcpu: 32, memory_mib: 1024}]\nrequests: []\n")
    assert run_place(["--cluster", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"error: novacron place: {path}: hosts[0]: vcpus: field required; "
        "vcpu: unknown key (did you mean 'vcpus'?)\n"
    )


def test_place_command_reports_every_invalid_entry_one_a_line(tmp_path, capsys):
    path = tmp_path / "cluster.yaml"
    path.write_text(
        "hosts:\n"
        "  - {id: a, vcpus: 4, memory_mib: 1, colour: red, labels: {zone: 1}}\n"
        "  - 5\n"
        "  - {vcpus: 2, memory_mib: 3, used_vcpus: -1}\n"
        "  - {id: ok, vcpus: 2, memory_mib: 3}\n"
    )
    assert run_place(["--cluster", str(path)]) == 2
    err = capsys.readouterr().err
    lines = err.removeprefix("error: novacron place: ").splitlines()
    assert lines[0].startswith(f"{path}: hosts[0]: labels.zone: input should be a valid string")
    assert "; colour: unknown key (known keys: id, name, address, vcpus," in lines[0]
    assert lines[1] == f"{path}: hosts[1]: must be a mapping of host fields, got int"
    # ``name`` is derived from ``id``: only the missing id is reported.
    assert lines[2] == (
        f"{path}: hosts[2]: id: field required; "
        "used_vcpus: input should be greater than or equal to 0 (got -1)"
    )
    assert len(lines) == 3
    for internal in ("driver", "pydantic", "input_value", "http"):
        assert internal not in err


def test_place_command_reports_bad_requests_with_a_close_key(tmp_path, capsys):
    cluster = tmp_path / "hosts.yaml"
    cluster.write_text("hosts: [{id: a, vcpus: 4, memory_mib: 4096}]\n")
    requests = tmp_path / "vms.yaml"
    requests.write_text("requests: [{name: v, memory: 512}, {vcpus: 1}]\n")
    assert run_place(["--cluster", str(cluster), "--requests", str(requests)]) == 2
    assert capsys.readouterr().err == (
        f"error: novacron place: {requests}: requests[0]: memory: unknown key "
        f"(did you mean 'memory_mib'?)\n{requests}: requests[1]: name: field required\n"
    )


def test_place_command_suggests_a_misspelt_top_level_key(tmp_path, capsys):
    path = tmp_path / "cluster.yaml"
    path.write_text("host: [{id: a, vcpus: 4, memory_mib: 4096}]\n")
    assert run_place(["--cluster", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path} has no 'hosts' list (found 'host': did you mean 'hosts'?)" in err
    assert "docs/dwcp-placement.md" in err


def test_place_command_names_the_file_and_line_of_a_yaml_error(tmp_path, capsys):
    path = tmp_path / "cluster.yaml"
    path.write_text("hosts:\n  - {id: a\nrequests: []\n")
    assert run_place(["--cluster", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}, line 3, column 9: not valid YAML/JSON: expected ',' or '}}'" in err
    assert "while parsing a flow mapping at line 2, column 5" in err
    assert "<unicode string>" not in err


def test_place_command_names_a_binary_file(tmp_path, capsys):
    path = tmp_path / "cluster.yaml"
    path.write_bytes(b"\xd0\xcf\x11\xe0")
    assert run_place(["--cluster", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path} is not a text file" in err
    assert "codec" not in err


@pytest.mark.parametrize(
    "text",
    [
        "sn,cpu_milli,memory_mib,gpu,model\nopenb-node-0000,64000,262144,2,P100\n",
        'a,"b\n',  # not even a YAML scalar
    ],
)
def test_place_command_says_csv_is_not_read_directly(tmp_path, capsys, text):
    path = tmp_path / "nodes.csv"
    path.write_text(text)
    assert run_place(["--cluster", str(path)]) == 2
    err = capsys.readouterr().err
    assert "reads YAML/JSON files" in err
    assert "docs/dwcp-placement.md" in err
    assert "CSV is not read directly" in err
    assert "benchmarks/placement.py" in err


def test_a_yaml_file_that_is_no_mapping_gets_the_format_hint_but_no_csv_note(tmp_path, capsys):
    path = tmp_path / "cluster.yaml"
    path.write_text("- a\n- b\n")
    assert run_place(["--cluster", str(path)]) == 2
    err = capsys.readouterr().err
    assert "must hold a mapping with 'hosts' and/or 'requests'" in err
    assert "docs/dwcp-placement.md" in err
    assert "CSV" not in err


@pytest.mark.parametrize("limit", ["-1", "0", "nan", "inf"])
def test_place_command_rejects_a_time_limit_that_is_not_positive(tmp_path, capsys, limit):
    path = tmp_path / "cluster.yaml"
    path.write_text(CLUSTER)
    assert run_place(["--cluster", str(path), "--batch", "--time-limit", limit]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: --time-limit takes the batch solver's budget")
    assert f"got {float(limit):g}" in captured.err


class _VetoHostB:
    """A plugin whose novacron_filter_host hook vetoes host b."""

    from novacron_sdk.plugin import hookimpl

    @hookimpl
    def novacron_filter_host(self, request, host):
        return "maintenance" if host.host.id == "b" else None


def test_core_placement_service_runs_plugin_filters_then_the_nova_scheduler():
    from novacron_sdk.placement import service
    from novacron_sdk.plugin.manager import build_plugin_manager

    plugins = build_plugin_manager(
        autoload=False, plugins=[("dwcp-placement", hooks), ("veto", _VetoHostB())]
    )
    assert plugins.placement.default_name() == "nova"
    decision = service.place(plugins, PlacementRequest(name="vm"), [host("b"), host("c")])
    assert decision.host_id == "c"
    assert decision.policy == "nova"
    assert "maintenance" in decision.rejected["b"]


def test_placement_example_runs():
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[3] / "examples" / "placement.py"
    result = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "no host fits huge" in result.stdout
    assert "db-1 -> cpu-" in result.stdout
