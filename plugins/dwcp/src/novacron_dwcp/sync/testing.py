"""pytest fixtures for multi-region sync tests (imported by the DWCP conftest).

Imports pytest: only tests import this module. ``sync_regions(count)`` starts regions on
127.0.0.1 where region i reaches region j through its own :class:`LinkRelay`, so a test can
partition a region and heal it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from novacron_dwcp.sync.node import SyncNode
from novacron_dwcp.sync.relay import LinkRelay


class SyncRegions:
    """Sync nodes; node i reaches node j through its own relay ``links[i, j]``."""

    def __init__(self) -> None:
        self.nodes: list[SyncNode] = []
        self.links: dict[tuple[int, int], LinkRelay] = {}

    def partition(self, region: int, *, down: bool = True) -> None:
        """Cut (or with ``down=False`` heal) every link into and out of ``region``."""
        for (src, dst), link in self.links.items():
            if region in (src, dst):
                link.down = down

    async def close(self) -> None:
        """Stop every node and relay."""
        for node in self.nodes:
            await node.close()
        for link in self.links.values():
            await link.close()


SyncRegionsFactory = Callable[..., Awaitable[SyncRegions]]


async def start_regions(count: int, *, interval_s: float, delay_s: float) -> SyncRegions:
    """``count`` started regions in a full mesh of relays with ``delay_s`` each way."""
    regions = SyncRegions()
    names = [f"region-{i}" for i in range(count)]
    regions.nodes = [SyncNode(n, interval_s=interval_s, timeout_s=2.0) for n in names]
    try:
        ports = [int((await node.serve()).rsplit(":", 1)[1]) for node in regions.nodes]
        for i, node in enumerate(regions.nodes):
            for j in range(count):
                if i != j:
                    link = await LinkRelay(ports[j], delay_s=delay_s).start()
                    regions.links[i, j] = link
                    node.peers[names[j]] = link.url
    except BaseException:
        await regions.close()
        raise
    for node in regions.nodes:
        node.start()
    return regions


@pytest.fixture
async def sync_regions() -> AsyncIterator[SyncRegionsFactory]:
    """``await sync_regions(3, interval_s=0.05, delay_s=0.0)``: started regions, closed after."""
    built: list[SyncRegions] = []

    async def make(count: int, *, interval_s: float = 0.05, delay_s: float = 0.0) -> SyncRegions:
        regions = await start_regions(count, interval_s=interval_s, delay_s=delay_s)
        built.append(regions)
        return regions

    yield make
    for regions in built:
        await regions.close()
