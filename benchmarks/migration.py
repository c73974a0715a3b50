"""Live migration between two real agents on loopback, against stop-and-copy in the same run.

For each VM size and dirty rate, a sim VM with a hot-set workload is migrated from agent A to
agent B by pre-copy, once per data plane: the core builtins (TCP transport, zero+zlib codec)
and, when novacron-dwcp is installed, DWCP (its transport and codec chain). Each is set beside
the naive baseline measured in the same run over the same transport: stop-and-copy (pause,
send all memory raw, resume). Figures: total time, downtime and bytes on the wire, each as a
ratio to its baseline. Every migration is verified (per-page digests) or the run fails.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Figure, parse_args, report

from novacron_sdk.agent.client import AgentClient
from novacron_sdk.agent.local import LocalAgent
from novacron_sdk.migration.models import MigrationReport, MigrationSettings
from novacron_sdk.migration.remote import migrate_via_agents
from novacron_sdk.models import VMSpec
from novacron_sdk.plugin.manager import build_plugin_manager

MIB = 1024 * 1024


def _extra(parser: Any) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", help="VM sizes in MiB")
    parser.add_argument("--rates", type=float, nargs="+", help="dirty rates in MB/s")


def data_planes() -> dict[str, dict[str, Any]]:
    """Pre-copy configurations to measure: builtins always, DWCP when installed."""
    planes: dict[str, dict[str, Any]] = {
        "builtin": {"transport": "tcp", "codec": "zlib", "predictor": "ewma"},
    }
    plugins = build_plugin_manager()
    if "dwcp" in plugins.transports and "dwcp" in plugins.codecs:
        planes["dwcp"] = {"transport": "dwcp", "codec": "dwcp"}
    return planes


async def migrate_once(
    a: str, b: str, name: str, memory_mib: int, rate: float, settings: dict[str, Any]
) -> MigrationReport:
    """Create a busy VM on ``a``, migrate it to ``b``, destroy it there."""
    workload = {
        "pattern": "hot-set" if rate > 0 else "idle",
        "rate_mbps": rate,
        "hot_fraction": 0.1,
        "seed": 11,
    }
    spec = VMSpec(
        name=name, memory_mib=memory_mib, vcpus=1, extra={"fill": "mixed", "workload": workload}
    )
    async with AgentClient(a) as ca, AgentClient(b) as cb:
        vm = await ca.create_vm(spec)
        await asyncio.sleep(0.5)
        result = await migrate_via_agents(
            vm.id, source=a, destination=b, settings=MigrationSettings.model_validate(settings)
        )
        if result.verification.get("mismatches") != 0:
            msg = f"{name}: verification failed: {result.verification}"
            raise RuntimeError(msg)
        await cb.destroy_vm(name)
    return result


async def run(
    a: str, b: str, sizes: list[int], rates: list[float]
) -> tuple[list[Figure], list[dict[str, Any]]]:
    """Every (size, rate, plane) beside its stop-and-copy baseline."""
    figures: list[Figure] = []
    rows: list[dict[str, Any]] = []
    n = 0
    for size in sizes:
        for rate in rates:
            for plane, settings in data_planes().items():
                n += 1
                base = await migrate_once(
                    a,
                    b,
                    f"base{n}",
                    size,
                    rate,
                    {"transport": settings["transport"], "codec": "raw", "precopy": False},
                )
                pre = await migrate_once(a, b, f"pre{n}", size, rate, settings)
                label = f"{plane} {size} MiB @ {rate:g} MB/s"
                base_label = f"stop-and-copy raw over {settings['transport']}"
                figures += [
                    Figure(f"{label}: total time", pre.total_s, "s", base_label, base.total_s),
                    Figure(
                        f"{label}: downtime",
                        pre.downtime_ms,
                        "ms",
                        base_label,
                        base.downtime_ms,
                        target=f"<= {pre.downtime_limit_ms:.0f} ms limit",
                        met=pre.downtime_ms <= pre.downtime_limit_ms,
                    ),
                    Figure(
                        f"{label}: bytes on wire",
                        pre.bytes_on_wire / MIB,
                        "MiB",
                        base_label,
                        base.bytes_on_wire / MIB,
                    ),
                ]
                rows.append(
                    {
                        "plane": plane,
                        "size_mib": size,
                        "rate_mbps": rate,
                        "precopy": pre.model_dump(mode="json"),
                        "baseline": base.model_dump(mode="json"),
                    }
                )
    return figures, rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module docstring."""
    args = parse_args(__doc__ or "", argv, _extra)
    sizes = args.sizes or ([128] if args.quick else [256, 512, 1024])
    rates = args.rates or ([20.0] if args.quick else [0.0, 20.0, 60.0])
    env = dict(os.environ)
    with LocalAgent("bench-a", env=env) as a, LocalAgent("bench-b", env=env) as b:
        figures, rows = asyncio.run(run(a.url, b.url, sizes, rates))
    return report(
        "migration",
        "Live migration vs stop-and-copy (same run, same transport)",
        args,
        figures,
        {"migrations": rows},
    )


if __name__ == "__main__":
    raise SystemExit(main())
