"""``novacron status --cluster``: print the cluster as the configured state store sees it."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from novacron_sdk.cluster.status import configured_cluster_status

if TYPE_CHECKING:
    from novacron_sdk.config import NovaCronConfig
    from novacron_sdk.plugin.manager import NovaCronPluginManager


def print_cluster(data: dict[str, Any]) -> None:
    """Print hosts, the controller and VM owners (orphaned VMs highlighted)."""
    from novacron_sdk.cli import output

    output.echo(f"state store: {data['store']}; controller: {data['controller'] or 'none elected'}")
    output.print_table(
        ("host", "url", "driver", "vCPUs", "memory MiB"),
        [(h["name"], h["url"], h["driver"], h["vcpus"], h["memory_mib"]) for h in data["hosts"]],
        title="Hosts (live leases)",
    )
    orphaned = set(data["orphaned_vms"])
    vms = data["vms"]
    output.print_table(
        ("VM", "owner", "epoch"),
        [(v["vm"], v["host"], v["epoch"]) for v in vms],
        title="VM owners",
        highlight=[i for i, v in enumerate(vms) if v["vm"] in orphaned],
    )
    if orphaned:
        output.warn(
            f"{len(orphaned)} VM(s) are owned by hosts that are not registered: "
            f"{', '.join(sorted(orphaned))}"
        )


def cluster_report(config: NovaCronConfig, plugins: NovaCronPluginManager, *, as_json: bool) -> int:
    """Read the cluster from the configured store and print it (JSON with ``as_json``)."""
    from novacron_sdk.cli import output

    data = asyncio.run(configured_cluster_status(config, plugins))
    if as_json:
        output.print_json(data)
    else:
        print_cluster(data)
    return 0
