"""Live migration between two real agents on loopback, against stop-and-copy in the same run.

For each VM size and dirty rate, a sim VM with a hot-set workload is migrated from agent A to
agent B by pre-copy, once per data plane: the core builtins (TCP transport, zero+zlib codec)
and, when novacron-dwcp is installed, DWCP (its transport and codec chain). Each is set beside
the naive baseline measured in the same run over the same transport: stop-and-copy (pause,
send all memory raw, resume). Figures: total time, downtime and bytes on the wire, each as a
ratio to its baseline. Every migration is verified (per-page digests) or the run fails.

With DWCP installed, a slow-link case follows: a 64 MiB sim VM (light hot-set writes)
migrated in-process (real sim drivers, the DWCP transport on loopback) with the engine's
wire cap at 16 Mbit/s, where sends wait for the "link": the chain as shipped (the engine
measures the link from that backpressure during the first round and hands the rate to the
codec, which moves to its long-window streams) beside the same chain forced to zstd-1 frames
(what it sends without a bandwidth estimate), in the same run. Sim memory is synthetic text
and repeats far more than real guest memory (see ``benchmarks/encoding.py`` for real images).

Without ``--quick``, and where the WAN emulator can run (Linux, root), a WAN case follows:
two agents in their own network namespaces joined by the project's emulated link (10 Mbit/s,
40 ms round trip), a 64 MiB sim VM writing 1 MB/s to 5 % of its memory, once per data plane:
pre-copy beside stop-and-copy with the same transport and codec over the same link, in the
same run (about a minute). Its downtime target is the 300 ms limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
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
        verified(result, name)
        await cb.destroy_vm(name)
    return result


def verified(report: MigrationReport, name: str) -> MigrationReport:
    """``report``, or RuntimeError when the migration's page digests did not all match."""
    if report.verification.get("mismatches") != 0:
        msg = f"{name}: verification failed: {report.verification}"
        raise RuntimeError(msg)
    return report


def time_and_downtime(
    label: str, pre: MigrationReport, base_label: str, base: MigrationReport
) -> list[Figure]:
    """Total time and downtime of ``pre`` beside ``base``; the downtime judged by its limit."""
    return [
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
    ]


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
                    *time_and_downtime(label, pre, base_label, base),
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


CAPPED_BPS = 16e6
CAPPED_MIB = 64


async def capped_once(method: str | None) -> MigrationReport:
    """One in-process DWCP migration over the capped link; ``method`` forces a codec method."""
    import novacron_dwcp.hooks
    from novacron_dwcp.encoding.chain import DwcpCodec
    from novacron_sdk.builtin.sim.driver import SimDriver
    from novacron_sdk.migration.inprocess import migrate_between
    from novacron_sdk.migration.planner import plan_migration
    from novacron_sdk.transport.interface import Endpoint

    plugins = build_plugin_manager(autoload=False, plugins=[("dwcp", novacron_dwcp.hooks)])
    src, dst = SimDriver({"host_name": "capped-a"}), SimDriver({"host_name": "capped-b"})
    try:
        workload = {"pattern": "hot-set", "rate_mbps": 2, "hot_fraction": 0.1, "seed": 11}
        extra = {"fill": "mixed", "workload": workload}
        vm = await src.create_vm(VMSpec(name="capped", memory_mib=CAPPED_MIB, extra=extra))
        settings = MigrationSettings(max_bandwidth_bps=CAPPED_BPS)
        plan = plan_migration(plugins, settings, Endpoint())
        if method is not None:
            plan.codec = DwcpCodec({"method": method})
        result = await migrate_between(
            src, dst, vm.id, plugins=plugins, settings=settings, plan=plan
        )
        return verified(result, "capped migration")
    finally:
        await src.close()
        await dst.close()


async def run_capped() -> tuple[list[Figure], list[dict[str, Any]]]:
    """The chain as shipped beside zstd-1 frames, both over the 16 Mbit/s cap."""
    adaptive = await capped_once(None)
    frames = await capped_once("zstd-1")
    label = f"dwcp {CAPPED_MIB} MiB over a {CAPPED_BPS / 1e6:g} Mbit/s cap"
    base = "the same chain forced to zstd-1 frames"
    figures = [
        Figure(f"{label}: total time", adaptive.total_s, "s", base, frames.total_s),
        Figure(
            f"{label}: bytes on wire",
            adaptive.bytes_on_wire / MIB,
            "MiB",
            base,
            frames.bytes_on_wire / MIB,
        ),
    ]
    rows = [
        {"case": "capped", "codec": name, "report": r.model_dump(mode="json")}
        for name, r in (("adaptive", adaptive), ("zstd-1 frames", frames))
    ]
    return figures, rows


WAN_RATE_BPS = 10e6
WAN_RTT_S = 0.04
WAN_MIB = 64
WAN_CLIENT = """
import asyncio, json, sys
from novacron_sdk.agent.client import AgentClient
from novacron_sdk.migration.models import MigrationSettings
from novacron_sdk.migration.remote import migrate_via_agents
from novacron_sdk.models import VMSpec

async def main():
    a, b, name, mib, settings = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    work = {"pattern": "hot-set", "rate_mbps": 1, "hot_fraction": 0.05, "seed": 5}
    async with AgentClient(a) as ca:
        vm = await ca.create_vm(
            VMSpec(name=name, memory_mib=mib, extra={"fill": "mixed", "workload": work})
        )
        await asyncio.sleep(1)
        report = await migrate_via_agents(
            vm.id, source=a, destination=b,
            settings=MigrationSettings.model_validate(json.loads(settings)),
        )
    async with AgentClient(b) as cb:
        await cb.destroy_vm(name)
    print(report.model_dump_json())

asyncio.run(main())
"""


def run_wan() -> tuple[list[Figure], list[dict[str, Any]]]:
    """Pre-copy beside stop-and-copy over the emulated WAN link, per data plane."""
    from novacron_sdk.testing.wan import WanEmulator, symmetric, unavailable_reason

    why = unavailable_reason()
    if why is not None:
        print(f"WAN case skipped: {why}")
        return [], []
    figures: list[Figure] = []
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        emu = stack.enter_context(WanEmulator(*symmetric(WAN_RATE_BPS, rtt_s=WAN_RTT_S), seed=5))
        urls = emu.start_agents(tmp)
        client = tmp / "client.py"
        client.write_text(WAN_CLIENT)

        def migrate(name: str, settings: dict[str, Any]) -> MigrationReport:
            argv = [sys.executable, str(client), urls["a"], urls["b"], name, str(WAN_MIB)]
            done = emu.run(
                "a", [*argv, json.dumps(settings)], capture_output=True, text=True, timeout=600
            )
            if done.returncode != 0:
                msg = f"WAN migration {name} failed: {done.stderr[-2000:]}"
                raise RuntimeError(msg)
            result = MigrationReport.model_validate_json(done.stdout.strip().splitlines()[-1])
            return verified(result, f"WAN migration {name}")

        link = f"{WAN_RATE_BPS / 1e6:g} Mbit/s, {WAN_RTT_S * 1000:g} ms"
        for number, (plane, settings) in enumerate(data_planes().items()):
            pre = migrate(f"wan-pre{number}", settings)
            base = migrate(f"wan-base{number}", settings | {"precopy": False})
            label = f"{plane} {WAN_MIB} MiB @ 1 MB/s over {link}"
            base_label = f"stop-and-copy over the same link ({settings['codec']})"
            figures += time_and_downtime(label, pre, base_label, base)
            rows.append(
                {
                    "case": "wan",
                    "plane": plane,
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
    if "dwcp" in data_planes():
        capped_figures, capped_rows = asyncio.run(run_capped())
        figures += capped_figures
        rows += capped_rows
    if not args.quick:
        wan_figures, wan_rows = run_wan()
        figures += wan_figures
        rows += wan_rows
    return report(
        "migration",
        "Live migration vs stop-and-copy (same run, same transport)",
        args,
        figures,
        {"migrations": rows},
    )


if __name__ == "__main__":
    raise SystemExit(main())
