"""Regression tests for the review fixes in placement, prediction and multi-region sync.

Fault injectors used here:

- ``_serve_bad_peer``: a real uvicorn server on 127.0.0.1 answering the sync exchange with a
  well-formed envelope whose delta holds a malformed timestamp (a corrupt or hostile peer).
- ``_bad_request_body``: an exchange request whose first delta entry is valid and whose
  second is not (a partly corrupt delta that must be rejected whole).
- ``_ListingDriver``: an agent driver whose VM list a test edits while the agent is stopped
  (a VM deleted while the agent was down).
- ``_write_trace`` / ``_corrupt_model``: trace and learned-model files with one bad line or
  one bad field.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from novacron_dwcp.placement.batch import BatchPolicy, capacity_lower_bound, solve_batch
from novacron_dwcp.placement.scheduler import NovaScheduler
from novacron_dwcp.sync.component import SyncComponent
from novacron_dwcp.sync.node import EXCHANGE_PATH, SyncNode
from novacron_dwcp.sync.settings import SyncSettings
from novacron_sdk.errors import ConfigError
from novacron_sdk.init.interface import InitContext
from novacron_sdk.models import Host
from novacron_sdk.placement.interface import HostUsage, PlacementRequest
from novacron_sdk.testing import waiting
from novacron_sdk.testing.store import eventually

# --- bug 6: bad remote sync input ---------------------------------------------------------


async def _serve_bad_peer() -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    """Fault injector: a peer whose exchange reply carries a 2-item timestamp."""
    app = FastAPI()

    @app.post(EXCHANGE_PATH)
    async def exchange(body: dict[str, Any]) -> dict[str, Any]:
        return {"node": "evil", "seen": {}, "delta": {"maps": {"vms": [["vm-1", [1, 2], {}]]}}}

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    try:
        await waiting.eventually(lambda: server.started or task.done(), "the bad peer serves")
        assert server.started, task.exception()
    except BaseException:
        server.should_exit = True
        await asyncio.gather(task, return_exceptions=True)
        raise
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, task, f"http://127.0.0.1:{port}"


async def test_bad_reply_is_a_failed_exchange_and_the_peer_loop_goes_on() -> None:
    """A malformed reply counts as a failure (nothing merged); the loop keeps running and
    close() shuts everything down without raising."""
    server, task, url = await _serve_bad_peer()
    # A timeout would fail the exchange too: it must be the reply that fails it.
    node = SyncNode("a", {"evil": url}, interval_s=0.05, timeout_s=20)
    try:
        assert await node.exchange_with("evil") is False
        assert node.failures == {"evil": 1}
        assert node.replica.map("vms").items() == {}
        node.start()

        async def more_failures() -> bool:
            return node.failures["evil"] >= 3

        await eventually(more_failures, "further exchanges with the bad peer")
        assert not node._tasks[0].done()
    finally:
        await node.close()
        server.should_exit = True
        await task


def _bad_request_body() -> dict[str, Any]:
    """Fault injector: a valid far-future first entry, then an entry with a 1-item timestamp."""
    far = [2**50, 0, "evil"]
    return {
        "node": "evil",
        "seen": {},
        "delta": {"maps": {"vms": [["vm-1", far, {"x": 1}], ["vm-2", [1], 5]]}},
    }


async def test_bad_request_is_rejected_with_422_and_nothing_is_merged() -> None:
    """The served route (loopback HTTP) answers 4xx naming the bad item, merges nothing, and
    a later local write still wins (no lost update)."""
    node = SyncNode("b")
    url = await node.serve()
    try:
        async with httpx.AsyncClient() as client:
            response = await client.post(url + EXCHANGE_PATH, json=_bad_request_body())
        assert response.status_code == 422
        assert "delta.maps['vms'][1]" in response.json()["detail"]
        assert node.replica.map("vms").entries == {}
        node.replica.put("vms", "vm-1", {"x": "local"})
        assert node.replica.map("vms").get("vm-1") == {"x": "local"}
    finally:
        await node.close()


@pytest.mark.parametrize(
    ("delta", "where"),
    [
        ([], "delta: expected an object"),
        ({"maps": {"m": [["k", [1, 0, "n"]]]}}, "delta.maps['m'][0]"),
        ({"maps": {"m": [["k", [1, True, "n"], 1]]}}, "delta.maps['m'][0] timestamp"),
        ({"maps": {"m": [[3, [1, 0, "n"], 1]]}}, "delta.maps['m'][0] key"),
        ({"sets": {"s": {"adds": [["e", [1, 0, ""]]]}}}, "delta.sets['s'].adds[0] tag"),
        ({"sets": {"s": {"removes": [["e", [1, 0, "n"]]]}}}, "delta.sets['s'].removes[0]"),
        ({"other": {}}, "unknown sections"),
    ],
)
def test_decode_delta_names_the_bad_item(delta: Any, where: str) -> None:
    """Every shape error is a DeltaError naming where it is; merge() applies nothing."""
    from novacron_dwcp.sync.crdt import DeltaError, Replica, decode_delta

    with pytest.raises(DeltaError) as info:
        decode_delta(delta)
    assert where in str(info.value)
    replica = Replica("r")
    with pytest.raises(DeltaError):
        replica.merge(delta, {})
    assert replica.digest() == {"maps": {}, "sets": {}}


# --- bug 7: VM deleted while the agent was down -------------------------------------------


class _ListingDriver:
    """Fault injector: the VMs the agent's driver lists; a test edits ``ids`` while the
    agent is stopped."""

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids

    async def list_vms(self) -> list[Any]:
        return [
            SimpleNamespace(id=i, name=i, state=SimpleNamespace(value="running")) for i in self.ids
        ]


def _component(settings: SyncSettings, driver: _ListingDriver) -> SyncComponent:
    context = InitContext(
        config=SimpleNamespace(get=lambda name, model: settings),  # type: ignore[arg-type]
        plugins=None,  # type: ignore[arg-type]
    )
    context.values["service"] = SimpleNamespace(driver=driver, name="host-a")
    return SyncComponent(context)


async def test_vm_deleted_while_agent_down_leaves_every_region() -> None:
    """The real component and a real peer node over loopback HTTP: after a restart, the VM
    that went away while the agent was down is tombstoned in both regions; others stay."""
    peer = SyncNode("b", interval_s=0.05)
    url = await peer.serve()
    driver = _ListingDriver(["vm1", "vm2"])
    settings = SyncSettings(region="a", peers={"b": url}, interval_s=0.05)
    try:
        component = _component(settings, driver)
        await component.start()

        async def both_at_peer() -> bool:
            return set(peer.replica.map("vms").items()) == {"vm1", "vm2"}

        try:
            await eventually(both_at_peer, "first publication")
        finally:
            await component.stop()
        driver.ids = ["vm1"]  # vm2 deleted while the agent was down
        component = _component(settings, driver)
        await component.start()
        assert component.node is not None
        node = component.node

        async def vm2_gone() -> bool:
            return set(peer.replica.map("vms").items()) == {"vm1"} and set(
                node.replica.map("vms").items()
            ) == {"vm1"}

        try:
            await eventually(vm2_gone, "deletion of vm2 in both regions")
        finally:
            await component.stop()
    finally:
        await peer.close()


# --- bugs 2, 1, 3: batch placement rules, lower bound, aggregates --------------------------


def _usage(i: int, vcpus: int = 4, memory_mib: int = 8192, **extra: Any) -> HostUsage:
    return HostUsage(
        host=Host(id=f"h{i}", name=f"h{i}", driver="t", vcpus=vcpus, memory_mib=memory_mib, **extra)
    )


def _solvers() -> list[str]:
    """Greedy always; CP-SAT when the cpsat extra is installed."""
    try:
        import ortools  # noqa: F401
    except ImportError:
        return ["greedy"]
    return ["greedy", "cp-sat"]


@pytest.mark.parametrize("solver", _solvers())
def test_batch_policy_keeps_max_instances_per_host(solver: str) -> None:
    """The real BatchPolicy with ``max_instances_per_host: 1`` spreads 3 VMs on 3 hosts."""
    hosts = [_usage(i, vcpus=64, memory_mib=65536) for i in range(3)]
    requests = [PlacementRequest(name=f"vm{i}", vcpus=1, memory_mib=512) for i in range(3)]
    policy = BatchPolicy({"max_instances_per_host": 1, "solver": solver, "time_limit_s": 5})
    decisions = policy.place_batch(requests, hosts)
    assert sorted(d.host_id or "-" for d in decisions) == ["h0", "h1", "h2"]


@pytest.mark.parametrize("solver", _solvers())
def test_batch_policy_limit_leaves_the_rest_out_with_the_reason(solver: str) -> None:
    """Four VMs, two hosts, one VM per host: two are left out, each saying why."""
    hosts = [_usage(i, vcpus=64, memory_mib=65536) for i in range(2)]
    requests = [PlacementRequest(name=f"vm{i}", vcpus=1, memory_mib=512) for i in range(4)]
    policy = BatchPolicy({"max_instances_per_host": 1, "solver": solver, "time_limit_s": 5})
    decisions = policy.place_batch(requests, hosts)
    assert sum(d.host_id is None for d in decisions) == 2
    left = next(d for d in decisions if d.host_id is None)
    assert all("the limit is 1" in reason for reason in left.rejected.values())
    assert policy.last_result is not None
    assert policy.last_result.lower_bound <= policy.last_result.hosts_used


def _veto_h0(request: PlacementRequest, host: HostUsage) -> str | None:
    """Fault injector: an extra filter (as a hook would add) that vetoes host h0."""
    return "vetoed by the test filter" if host.host.id == "h0" else None


@pytest.mark.parametrize("solver", _solvers())
def test_batch_policy_keeps_extra_filters(solver: str) -> None:
    """Every VM avoids the host the extra filter vetoes, as the single-request path does."""
    hosts = [_usage(i, vcpus=64, memory_mib=65536) for i in range(2)]
    requests = [PlacementRequest(name=f"vm{i}") for i in range(3)]
    settings = {"extra_filters": [_veto_h0], "solver": solver, "time_limit_s": 5}
    assert NovaScheduler(settings).place(requests[0], hosts).host_id == "h1"
    decisions = BatchPolicy(settings).place_batch(requests, hosts)
    assert [d.host_id for d in decisions] == ["h1", "h1", "h1"]


def test_batch_policy_extra_filter_leaving_nothing_explains_it() -> None:
    """A VM no host passes gets the filter's reason for every host (explain_batch)."""
    hosts = [_usage(0, vcpus=64, memory_mib=65536)]
    decisions = BatchPolicy({"extra_filters": [_veto_h0], "solver": "greedy"}).place_batch(
        [PlacementRequest(name="a")], hosts
    )
    assert decisions[0].host_id is None
    assert decisions[0].rejected == {"h0": "vetoed by the test filter"}


@pytest.mark.parametrize("solver", ["greedy", "auto"])
def test_lower_bound_never_above_hosts_used_when_a_vm_is_left_out(solver: str) -> None:
    """The reviewer's bound.yaml: a VM no host can take does not raise the bound."""
    hosts = [_usage(i) for i in range(3)]
    requests = [
        PlacementRequest(name="small", vcpus=4, memory_mib=1024),
        PlacementRequest(name="huge", vcpus=100, memory_mib=1024),
    ]
    result = solve_batch(requests, hosts, solver=solver, time_limit_s=5)  # type: ignore[arg-type]
    assert result.unplaced == ["huge"]
    assert (result.hosts_used, result.lower_bound) == (1, 1)
    assert any("covers the 1 placed VM(s) only" in note for note in result.notes)
    assert capacity_lower_bound(requests, hosts) == 1


def test_lower_bound_with_capacity_left_out_stays_at_most_hosts_used() -> None:
    """VMs that fit some host but not all at once: the bound covers the placed ones only."""
    hosts = [_usage(i) for i in range(2)]
    requests = [PlacementRequest(name=f"vm{i}", vcpus=4, memory_mib=1024) for i in range(5)]
    result = solve_batch(requests, hosts, solver="greedy")
    assert (len(result.unplaced), result.hosts_used) == (3, 2)
    assert result.lower_bound == 2


def test_place_cli_batch_reports_a_bound_not_above_hosts_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``novacron place --batch`` on the reviewer's cluster file prints bound 1, not 3."""
    from novacron_dwcp.placement import cli

    cluster = tmp_path / "bound.yaml"
    cluster.write_text(
        "hosts:\n"
        "  - {id: h0, vcpus: 4, memory_mib: 8192}\n"
        "  - {id: h1, vcpus: 4, memory_mib: 8192}\n"
        "  - {id: h2, vcpus: 4, memory_mib: 8192}\n"
        "requests:\n"
        "  - {name: small, vcpus: 4, memory_mib: 1024}\n"
        "  - {name: huge, vcpus: 100, memory_mib: 1024}\n",
        encoding="utf-8",
    )
    args = SimpleNamespace(
        cluster=cluster, requests=None, batch=True, time_limit=5.0, json=False, policy="nova"
    )
    assert cli.run(args) == 3  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert "1 host(s) used" in out
    assert "lower bound 1," in out


def test_aggregate_string_is_one_name_not_a_substring() -> None:
    """``aggregates: gpu-large`` (a string) is the aggregate gpu-large, not g, gp, gpu..."""
    host = _usage(0, extra={"aggregates": "gpu-large"})
    assert NovaScheduler().place(_aggregate_request("gpu"), [host]).host_id is None
    assert NovaScheduler().place(_aggregate_request("gpu-large"), [host]).host_id == "h0"
    listed = _usage(1, extra={"aggregates": ["gpu-large", "ssd"]})
    assert NovaScheduler().place(_aggregate_request("ssd"), [listed]).host_id == "h1"
    assert NovaScheduler().place(_aggregate_request("gpu"), [listed]).host_id is None


def _aggregate_request(name: str) -> PlacementRequest:
    return PlacementRequest(name="a", required_labels={"aggregate": name})


def test_cluster_file_rejects_non_list_aggregates(tmp_path: Path) -> None:
    """A cluster file whose aggregates are a number says where and what to write."""
    from novacron_dwcp.placement import cluster_file

    path = tmp_path / "cluster.yaml"
    path.write_text(
        "hosts:\n  - {id: h0, vcpus: 4, memory_mib: 8192, extra: {aggregates: 7}}\nrequests: []\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"hosts\[0\]: extra.aggregates must be a list"):
        cluster_file.load(path, None)
    path.write_text(
        "hosts:\n  - {id: h0, vcpus: 4, memory_mib: 8192, extra: {aggregates: gpu-large}}\n"
        "requests: [{name: a, required_labels: {aggregate: gpu}}]\n",
        encoding="utf-8",
    )
    hosts, requests = cluster_file.load(path, None)
    assert NovaScheduler().place(requests[0], hosts).host_id is None


# --- bug 4: trace files with NaN/inf or going back in time ----------------------------------


def _write_trace(tmp_path: Path, line_11: str) -> Path:
    """Fault injector: a 29-line trace whose line 11 is ``line_11`` (the reviewer's files)."""
    lines = [f"{t}\t{5 + t % 3}" for t in range(1, 30)]
    lines[10] = line_11
    path = tmp_path / "trace.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("line_11", "problem"),
    [
        ("11\tnan", "throughput 'nan' is not a finite number of Mbit/s"),
        ("11\tinf", "throughput 'inf' is not a finite number of Mbit/s"),
        ("11\t1e303", "throughput '1e303' is not a finite number of Mbit/s"),
        ("nan\t5", "time 'nan' is not a finite number of seconds"),
        ("inf\t5", "time 'inf' is not a finite number of seconds"),
        ("3\t5", "time 3 s does not increase after 10 s (line 10)"),
        ("10\t5", "time 10 s does not increase after 10 s (line 10)"),
    ],
)
def test_read_trace_names_file_and_line_of_a_bad_sample(
    tmp_path: Path, line_11: str, problem: str
) -> None:
    """Every bad sample is a ConfigError ``FILE:LINE: problem``."""
    from novacron_dwcp.prediction.traces import read_trace

    path = _write_trace(tmp_path, line_11)
    with pytest.raises(ConfigError) as info:
        read_trace(path)
    assert str(info.value).startswith(f"{path}:11: {problem}")


def test_trace_from_points_rejects_non_finite_samples() -> None:
    """Traces built in code get the same guarantees (finite samples)."""
    from novacron_dwcp.prediction.traces import Trace

    with pytest.raises(ConfigError, match="finite time"):
        Trace.from_points("t", [(1.0, 5.0), (2.0, float("nan")), (3.0, 5.0)])


def test_predict_cli_reports_the_bad_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``novacron predict`` on a NaN trace exits 2 with FILE:LINE, not a pydantic dump."""
    from novacron_dwcp.prediction import cli

    path = _write_trace(tmp_path, "11\tnan")
    args = SimpleNamespace(trace=[path], json=False, predictors="", horizons="1,10")
    assert cli.run(args) == 2  # type: ignore[arg-type]
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert f"{path}:11:" in text
    assert "validation error" not in text.lower()


# --- bug 5: corrupt learned-model files ------------------------------------------------------


def _shipped_model() -> dict[str, Any]:
    from importlib import resources

    text = resources.files("novacron_dwcp.prediction.model").joinpath("learned_gbt.json")
    data: dict[str, Any] = json.loads(text.read_text())
    return data


def _corrupt_model(tmp_path: Path, edit: Any) -> Path:
    """Fault injector: the shipped model with one edit applied, written to a temp file
    (an edit returning a list replaces the whole document)."""
    data = _shipped_model()
    result = edit(data)
    path = tmp_path / "model.json"
    path.write_text(json.dumps(result if isinstance(result, list) else data), encoding="utf-8")
    return path


def _set_tree(key: str, index: int, value: Any) -> Any:
    def edit(data: dict[str, Any]) -> None:
        data["trees"][0][key][index] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda d: [d], "the document must be a JSON object, got list"),
        (lambda d: d.pop("trees") and None, "trees is missing"),
        (lambda d: d.update(baseline="x"), "baseline must be a finite number, got 'x'"),
        (lambda d: d["lower"].update(factors=[]), "lower.factors has 0 horizon rows"),
        (lambda d: d["lower"].pop("coverage"), "lower.coverage is missing"),
        (lambda d: d["lower"]["factors"][0][0].pop(), "lower.factors[0][0] has 2 volatility"),
        (_set_tree("feature", 0, 9999), "trees[0].feature[0] = 9999 must be an integer"),
        (_set_tree("left", 0, 1_000_000), "trees[0].left[0] = 1000000 must be an integer"),
        (_set_tree("left", 1, 0), "trees[0] node 1 has children 0, 3"),
        (_set_tree("value", 0, float("nan")), "trees[0].value[0] must be a finite number"),
        (_set_tree("threshold", 0, float("inf")), "trees[0].threshold[0] must be a finite"),
        (lambda d: d["trees"][0]["right"].pop(), "trees[0].right has 60 items, value has 61"),
        (lambda d: d.update(horizons=[]), "horizons is empty"),
    ],
)
def test_corrupt_model_fails_at_load_naming_file_and_field(
    tmp_path: Path, edit: Any, problem: str
) -> None:
    """Every corruption is a ConfigError at load time naming the file and the field."""
    from novacron_dwcp.prediction.learned import LearnedPredictor

    path = _corrupt_model(tmp_path, edit)
    with pytest.raises(ConfigError) as info:
        LearnedPredictor({"model": str(path)})
    assert f"model file {path}: {problem}" in str(info.value)


def test_shipped_model_passes_the_load_checks(tmp_path: Path) -> None:
    """The shipped model, also as a copy on disk, loads and predicts."""
    from novacron_dwcp.prediction.learned import LearnedPredictor
    from novacron_dwcp.prediction.traces import read_trace

    path = _corrupt_model(tmp_path, lambda d: None)
    predictor = LearnedPredictor({"model": str(path)})
    predictor.observe(read_trace(_write_trace(tmp_path, "11\t6")).samples())
    estimate = predictor.predict(10.0)
    assert estimate is not None
    assert estimate.mean_bps > 0
