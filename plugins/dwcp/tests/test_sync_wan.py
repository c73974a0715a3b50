"""Sync regions as real processes in their own namespaces, partitioned by the WAN emulator."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from novacron_dwcp.sync.emulated import EmulatedRegions
from novacron_dwcp.sync.hlc import Timestamp
from novacron_sdk.testing.wan import LinkProfile, skip_unless_available

DEADLINE_S = 60.0
A, B, C = "region-0", "region-1", "region-2"


def _wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {DEADLINE_S} s")
        time.sleep(0.1)


def _ts(answer: dict[str, list[int | str]]) -> Timestamp:
    return Timestamp.decode(answer["ts"])


@pytest.mark.slow
def test_emulator_partition_write_both_sides_heal_converge() -> None:
    """One region cut off by the emulator (100 ms RTT links) and the rest both write; after
    healing, every region holds for every key the write with the greatest timestamp, every
    write to a distinct key, and every OR-set add not removed."""
    skip_unless_available()
    with EmulatedRegions(
        profile=LinkProfile(delay_s=0.050), interval_s=0.2, timeout_s=1.0
    ) as regions:
        regions.call(A, "put", map="vms", key="shared", value="before")
        regions.call(A, "add", set="hosts", element="h-a")

        def c_has_initial() -> bool:
            digest = regions.digest(C)
            return digest["maps"].get("vms", {}).get("shared") == "before" and "h-a" in digest[
                "sets"
            ].get("hosts", [])

        _wait_for(c_has_initial, "initial sync over the emulated links")
        regions.partition(C)
        failures_before = sum(regions.call(C, "status")["failures"].values())
        writes: list[tuple[str, Timestamp, object]] = []
        for n in range(5):
            writes.append(
                (
                    "shared",
                    _ts(regions.call(A, "put", map="vms", key="shared", value=f"a-{n}")),
                    f"a-{n}",
                )
            )
            writes.append(
                (
                    "shared",
                    _ts(regions.call(C, "put", map="vms", key="shared", value=f"c-{n}")),
                    f"c-{n}",
                )
            )
            regions.call(B, "put", map="vms", key=f"b-only-{n}", value=n)
            regions.call(C, "put", map="vms", key=f"c-only-{n}", value=n)
            time.sleep(0.1)
        writes.append(("gone", _ts(regions.call(C, "put", map="vms", key="gone", value="x")), "x"))
        writes.append(("gone", _ts(regions.call(A, "delete", map="vms", key="gone")), None))
        # Concurrent remove (cut-off side) and re-add (majority side): the add wins.
        assert regions.call(C, "remove", set="hosts", element="h-a")["removed"] == 1
        regions.call(A, "add", set="hosts", element="h-a")
        regions.call(B, "add", set="hosts", element="h-b")

        _wait_for(lambda: regions.digest(A) == regions.digest(B), "sync within the majority")
        assert "b-only-0" not in regions.digest(C)["maps"]["vms"]  # the partition held
        _wait_for(
            lambda: sum(regions.call(C, "status")["failures"].values()) > failures_before,
            "failed exchanges from the cut-off region",
        )

        regions.heal()
        _wait_for(
            lambda: regions.digest(A) == regions.digest(B) == regions.digest(C),
            "convergence after healing",
        )
        vms = regions.digest(C)["maps"]["vms"]
        shared = max((w for w in writes if w[0] == "shared"), key=lambda w: w[1])
        assert vms["shared"] == shared[2]
        gone = max((w for w in writes if w[0] == "gone"), key=lambda w: w[1])
        assert vms.get("gone") == gone[2]
        for n in range(5):  # writes to distinct keys: none lost
            assert vms[f"b-only-{n}"] == n
            assert vms[f"c-only-{n}"] == n
        assert regions.digest(A)["sets"]["hosts"] == ["h-a", "h-b"]
        assert regions.call(C, "status")["staleness_s"]  # merges were measured


async def test_region_process_answers_requests_on_a_real_node() -> None:
    """The request handler of a region process, on a node that is not serving."""
    from novacron_dwcp.sync.node import SyncNode
    from novacron_dwcp.sync.region_process import handle

    node = SyncNode("solo")
    try:
        ts = Timestamp.decode(
            handle(node, {"op": "put", "map": "vms", "key": "k", "value": 1})["ts"]
        )
        assert ts.node == "solo"
        assert handle(node, {"op": "add", "set": "hosts", "element": "h"})["ts"][2] == "solo"
        assert handle(node, {"op": "remove", "set": "hosts", "element": "h"}) == {"removed": 1}
        assert handle(node, {"op": "digest"})["digest"] == {
            "maps": {"vms": {"k": 1}},
            "sets": {"hosts": []},
        }
        assert handle(node, {"op": "status"})["exchanges"] == 0
        assert "unknown op" in handle(node, {"op": "explode"})["error"]
        assert "bad put" in handle(node, {"op": "put", "map": "vms"})["error"]
    finally:
        await node.close()
