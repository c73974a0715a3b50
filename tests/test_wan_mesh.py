"""The WAN mesh: N namespaces joined pairwise; per-pair delay, rate and loss, partitions."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from novacron_sdk.testing.wan import LinkProfile, WanEmulatorError, WanMesh, skip_unless_available

REGIONS = ("r0", "r1", "r2")
RTT_S = {("r0", "r1"): 0.020, ("r0", "r2"): 0.040, ("r1", "r2"): 0.060}
ANSWERED_S = 10.0
"""How long a probe waits for echoes that must come back: it ends as soon as all did, so this
bounds a lost echo, never a slow machine's late one."""


def _until(condition: Callable[[], bool], what: str, within_s: float = 20.0) -> None:
    """Poll ``condition`` until it holds; fail after ``within_s`` (a hang, not a slow machine)."""
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {within_s} s")
        time.sleep(0.02)


def _namespaces() -> set[str]:
    proc = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}


def test_bad_meshes_are_refused_before_anything_is_created() -> None:
    with pytest.raises(WanEmulatorError, match="distinct region names"):
        WanMesh(("a", "a", "b"))
    with pytest.raises(WanEmulatorError, match="distinct region names"):
        WanMesh(("a",))
    with pytest.raises(WanEmulatorError, match="joins no two regions"):
        WanMesh(("a", "b"), links={("a", "z"): LinkProfile()})


@pytest.fixture(scope="module")
def mesh() -> Iterator[WanMesh]:
    """Three regions; each pair with its own RTT (half of it each way)."""
    skip_unless_available()
    links = {}
    for (a, b), rtt in RTT_S.items():
        links[a, b] = links[b, a] = LinkProfile(delay_s=rtt / 2)
    with WanMesh(REGIONS, links=links) as emulated:
        yield emulated


@pytest.mark.parametrize("pair", list(RTT_S))
def test_each_pair_sees_its_own_round_trip(mesh: WanMesh, pair: tuple[str, str]) -> None:
    sent, rtts = mesh.udp_rtts(*pair, count=30, interval_s=0.02, wait_s=ANSWERED_S)
    assert sent == 30
    assert len(rtts) == 30
    assert min(rtts) >= RTT_S[pair]  # never faster than the configured delay
    # CPU stalls of a loaded 2-vCPU machine only ever add delay, to any share of the probes
    # (the forwarders and the probes wait for a CPU): the fastest probe is what the link does.
    assert min(rtts) == pytest.approx(RTT_S[pair], rel=0.10)


def test_partition_drops_a_regions_traffic_and_heal_restores_it(mesh: WanMesh) -> None:
    try:
        mesh.partition("r2")
        assert mesh.cut_pairs == {
            ("r0", "r2"),
            ("r2", "r0"),
            ("r1", "r2"),
            ("r2", "r1"),
        }
        for src, dst in (("r0", "r2"), ("r2", "r1")):
            sent, rtts = mesh.udp_rtts(src, dst, count=10, interval_s=0.01, wait_s=0.3)
            assert sent == 10
            assert rtts == []
        # The forwarder publishes its counters every 50 ms or so: wait for the drops to show.
        _until(lambda: mesh.dropped_by_cut("r0", "r2") >= 10, "10 drops counted on r0 -> r2")
        # The rest of the mesh is untouched.
        _, rtts = mesh.udp_rtts("r0", "r1", count=10, interval_s=0.01, wait_s=ANSWERED_S)
        assert len(rtts) == 10
    finally:
        mesh.heal()
    assert not mesh.cut_pairs
    _, rtts = mesh.udp_rtts("r2", "r0", count=10, interval_s=0.01, wait_s=ANSWERED_S)
    assert len(rtts) == 10
    assert min(rtts) >= RTT_S["r0", "r2"]  # back on the emulated link


def test_cutting_one_pair_leaves_the_detour_open(mesh: WanMesh) -> None:
    try:
        mesh.cut("r0", "r1")
        assert mesh.udp_rtts("r1", "r0", count=5, interval_s=0.01, wait_s=0.3)[1] == []
        assert len(mesh.udp_rtts("r1", "r2", count=5, interval_s=0.01, wait_s=ANSWERED_S)[1]) == 5
    finally:
        mesh.heal()
    assert len(mesh.udp_rtts("r0", "r1", count=5, interval_s=0.01, wait_s=ANSWERED_S)[1]) == 5


def test_regions_reach_only_their_peers(mesh: WanMesh) -> None:
    routes = mesh.run("r1", ["ip", "-4", "route"], capture_output=True, text=True).stdout
    assert sorted(line.split()[0] for line in routes.strip().splitlines()) == [
        mesh.address("r0"),
        mesh.address("r2"),
    ]
    # `ip route get` only looks the route up: no packet is sent.
    probe = mesh.run("r1", ["ip", "route", "get", "192.0.2.1"], capture_output=True, text=True)
    assert probe.returncode != 0
    assert "unreachable" in probe.stderr


@pytest.mark.slow
def test_loss_is_roughly_as_configured_on_a_pair() -> None:
    skip_unless_available()
    lossy = LinkProfile(delay_s=0.001, loss=0.10)
    with WanMesh(("a", "b", "c"), links={("a", "b"): lossy, ("b", "a"): lossy}, seed=5) as mesh:
        # Echoes still on their way when the probe stops count as lost: give the last ones 2 s.
        _, lossy_rtts = mesh.udp_rtts("a", "b", count=300, interval_s=0.003, wait_s=2.0)
        _, clean_rtts = mesh.udp_rtts("a", "c", count=100, interval_s=0.003, wait_s=ANSWERED_S)
        stats = mesh.stats("a", "b")
    # Each direction loses 10%: about 19% of the round trips fail.
    assert 0.08 < 1 - len(lossy_rtts) / 300 < 0.32
    assert 0.04 < stats.loss_rate < 0.18
    assert len(clean_rtts) == 100


@pytest.mark.slow
def test_rate_of_one_pair_is_within_ten_percent() -> None:
    skip_unless_available()
    rate = 20e6
    shaped = LinkProfile(rate_bps=rate, delay_s=0.005, queue_bytes=200_000)
    with WanMesh(("a", "b", "c"), links={("a", "b"): shaped}) as mesh:
        module = "novacron_sdk.testing.wan.tcpbench"
        common = ["--host", mesh.address("b"), "--port", "5201", "--streams", "1"]
        sink = mesh.python("b", "-m", module, "sink", *common, stdout=subprocess.PIPE, text=True)
        assert sink.stdout is not None
        assert sink.stdout.readline().startswith("READY")
        argv = [sys.executable, "-m", module, "source", *common, "--seconds", "2.5", "--cc", "bbr"]
        sent = mesh.run("a", argv, capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        result = json.loads(sink.communicate(timeout=60)[0])
        stats = mesh.stats("a", "b")
    goodput = 8 * result["bytes"] / result["seconds"]
    # TCP payload is 1448 of every 1500 bytes on the wire: goodput tops out at 96.5%, and never
    # exceeds the link. Below that, TCP's own processes waiting for a CPU (a loaded machine)
    # lower it; the link's accuracy is the wire rate below, measured while it was busy.
    assert 0.5 * rate <= goodput <= rate
    busy = [b for b in stats.buckets if b][2:-2]
    assert 8 * statistics.median(busy) / WanMesh.bucket_s == pytest.approx(rate, rel=0.10)


def test_everything_is_removed_even_when_the_body_fails() -> None:
    skip_unless_available()
    names: set[str] = set()

    def fail_inside() -> None:
        with WanMesh(("a", "b", "c")) as mesh:
            names.update(mesh.namespaces.values())
            assert names <= _namespaces()
            mesh.popen("b", ["sleep", "60"])
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    assert len(names) == 3
    assert not names & _namespaces()
