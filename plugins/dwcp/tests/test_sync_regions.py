"""Regions syncing over HTTP through cuttable links: convergence, partitions, healing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from novacron_dwcp.sync.hlc import Timestamp
from novacron_sdk.testing.store import eventually


async def _converged(regions: Any) -> bool:
    digests = [node.replica.digest() for node in regions.nodes]
    return all(d == digests[0] for d in digests)


async def test_three_regions_converge(sync_regions: Callable[..., Awaitable[Any]]) -> None:
    """Writes made in every region reach every other one, with staleness measured."""
    regions = await sync_regions(3)
    for i, node in enumerate(regions.nodes):
        for j in range(5):
            node.replica.put("vms", f"vm-{i}-{j}", {"host": f"h{i}"})
        node.replica.add("hosts", f"h{i}")

    async def done() -> bool:
        return await _converged(regions) and len(regions.nodes[0].replica.map("vms").items()) == 15

    await eventually(done, "convergence of three regions")
    assert regions.nodes[0].replica.set("hosts").elements() == {"h0", "h1", "h2"}
    for node in regions.nodes:
        assert len(node.staleness_s) >= 10  # every remote item's staleness was recorded


async def test_partition_write_both_sides_heal_converge(
    sync_regions: Callable[..., Awaitable[Any]],
) -> None:
    """A partitioned region and the rest both write; after healing every region holds, for
    every key, the write with the greatest timestamp, and every OR-set add not removed."""
    regions = await sync_regions(3)
    a, b, c = (node.replica for node in regions.nodes)
    a.put("vms", "shared", "before")
    a.add("hosts", "h-a")

    async def initial() -> bool:
        return c.map("vms").get("shared") == "before" and "h-a" in c.set("hosts").elements()

    await eventually(initial, "initial sync")
    regions.partition(2)
    failures_before = regions.nodes[2].failures.copy()
    writes: list[tuple[str, Timestamp, str | None]] = []
    for round_no in range(5):
        writes.append(("shared", a.put("vms", "shared", f"a-{round_no}"), f"a-{round_no}"))
        writes.append(("shared", c.put("vms", "shared", f"c-{round_no}"), f"c-{round_no}"))
        writes.append((f"a-only-{round_no}", b.put("vms", f"a-only-{round_no}", round_no), None))
        writes.append((f"c-only-{round_no}", c.put("vms", f"c-only-{round_no}", round_no), None))
        await asyncio.sleep(0.06)  # let the majority side sync across rounds
    writes.append(("gone", c.put("vms", "gone", "x"), "x"))
    writes.append(("gone", a.delete("vms", "gone"), None))  # concurrent: a's delete vs c's put
    c.remove("hosts", "h-a")  # concurrent with a re-add on the other side: add wins
    a.add("hosts", "h-a")
    b.add("hosts", "h-b")

    async def majority_synced() -> bool:
        return a.map("vms").items() == b.map("vms").items()

    await eventually(majority_synced, "sync within the majority side")
    assert c.map("vms").get("a-only-0") is None  # the partition really held

    async def cut_off_side_failed() -> bool:
        return sum(regions.nodes[2].failures.values()) > sum(failures_before.values())

    await eventually(cut_off_side_failed, "failed exchanges from the cut-off region")

    regions.partition(2, down=False)
    await eventually(lambda: _converged(regions), "convergence after healing")
    winner = max((w for w in writes if w[0] == "shared"), key=lambda w: w[1])
    assert a.map("vms").get("shared") == winner[2]
    gone_winner = max((w for w in writes if w[0] == "gone"), key=lambda w: w[1])
    assert a.map("vms").get("gone") == gone_winner[2]
    for round_no in range(5):  # writes to distinct keys: none lost
        assert c.map("vms").get(f"a-only-{round_no}") == round_no
        assert a.map("vms").get(f"c-only-{round_no}") == round_no
    assert c.set("hosts").elements() == {"h-a", "h-b"}


def test_sync_hooks_register_section_and_component() -> None:
    """The plugin adds the ``sync`` config section (off by default) and ``sync.node``."""
    from novacron_dwcp.sync import hooks
    from novacron_dwcp.sync.component import SyncComponent
    from novacron_dwcp.sync.settings import SyncSettings
    from novacron_sdk.plugin.manager import build_plugin_manager

    plugins = build_plugin_manager(autoload=False, plugins=[("dwcp-sync", hooks)])
    assert plugins.init_components.get("sync.node") is SyncComponent
    assert plugins.config_sections.get("sync") is SyncSettings
    assert SyncSettings().region is None
