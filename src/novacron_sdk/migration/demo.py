"""``novacron demo``: two agents on loopback, a busy sim VM, a live migration, the proof."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from novacron_sdk.agent.client import AgentClient
from novacron_sdk.agent.local import LocalAgent
from novacron_sdk.errors import ConfigError, MigrationError, NovaCronError
from novacron_sdk.migration.display import ProgressDisplay, print_report, verification_line
from novacron_sdk.migration.models import MigrationReport, MigrationSettings, migration_settings
from novacron_sdk.migration.remote import migrate_via_agents
from novacron_sdk.models import VMSpec, VMState


@dataclass
class DemoOptions:
    """What the demo migrates and how."""

    memory_mib: int = 512
    pattern: str = "hot-set"
    rate_mbps: float = 40.0
    hot_fraction: float = 0.1
    warmup_s: float = 1.0
    settings: dict[str, Any] = field(default_factory=dict)
    agent_settings: list[str] = field(default_factory=list)
    json_path: Path | None = None
    progress: bool = True


def demo_spec(options: DemoOptions) -> VMSpec:
    """The demo VM; a bad size raises ConfigError naming the ``novacron demo`` option."""
    try:
        return VMSpec(
            name="demo-vm",
            vcpus=2,
            memory_mib=options.memory_mib,
            extra={
                "fill": "mixed",
                "workload": {
                    "pattern": options.pattern,
                    "rate_mbps": options.rate_mbps,
                    "hot_fraction": options.hot_fraction,
                },
            },
        )
    except ValidationError as exc:
        # Only the sizes come from options (name and vcpus are fixed): name the option.
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "memory_mib"
            problems.append(f"--{field.replace('_', '-')} {err['input']!r}: {err['msg']}")
        msg = f"invalid demo option {'; '.join(problems)}"
        raise ConfigError(msg) from exc


async def _run(
    source: str,
    destination: str,
    options: DemoOptions,
    spec: VMSpec,
    settings: MigrationSettings,
) -> MigrationReport:
    async with AgentClient(source) as a, AgentClient(destination) as b:
        vm = await a.create_vm(spec)
        print(
            f"created {vm.name} ({vm.id}) on {source}: {vm.memory_mib} MiB, "
            f"{options.pattern} workload writing {options.rate_mbps:g} MB/s"
        )
        await asyncio.sleep(options.warmup_s)
        with ProgressDisplay(enabled=options.progress) as display:
            try:
                report = await migrate_via_agents(
                    vm.id,
                    source=source,
                    destination=destination,
                    settings=settings,
                    progress=display,
                )
            except MigrationError as exc:
                if isinstance(exc.report, MigrationReport):
                    print_report(exc.report)
                raise
        print_report(report)
        moved = await b.get_vm(vm.name)
        left = [v for v in await a.list_vms() if v.name == vm.name]
        if moved.state is not VMState.RUNNING or left:
            msg = (
                f"after migration the VM is {moved.state.value} at the destination and "
                f"{'still' if left else 'no longer'} at the source"
            )
            raise MigrationError(msg, report=report)
        print(verification_line(report))
        print(
            f"the VM now runs on {report.destination} ({moved.state.value}); "
            f"the source copy is released"
        )
    if options.json_path is not None:
        try:
            options.json_path.write_text(json.dumps(report.model_dump(mode="json"), indent=2))
        except OSError as exc:
            msg = (
                f"the migration completed, but its report could not be written to "
                f"{str(options.json_path)!r}: {exc.strerror or exc}"
            )
            raise NovaCronError(msg) from exc
        print(f"report written to {options.json_path}")
    return report


def run_demo(options: DemoOptions) -> MigrationReport:
    """Start two agents, migrate a busy VM between them, stop the agents."""
    # Bad options fail here, before two agents start and a VM is created for nothing.
    spec = demo_spec(options)
    settings = migration_settings(options.settings)
    with (
        LocalAgent("host-a", settings=options.agent_settings) as a,
        LocalAgent("host-b", settings=options.agent_settings) as b,
    ):
        print(f"started agents host-a at {a.url} and host-b at {b.url}")
        return asyncio.run(_run(a.url, b.url, options, spec, settings))
