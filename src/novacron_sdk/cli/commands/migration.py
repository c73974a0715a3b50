"""``novacron agent``, ``novacron migrate`` and ``novacron demo``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from novacron_sdk.cli.commands import number_arg, output_file_arg, write_output_file
from novacron_sdk.cli.interface import CliCommand

if TYPE_CHECKING:
    from novacron_sdk.plugin.registry import Registry

MBIT = 1_000_000
POSITIVE_INT = number_arg(int, minimum=1)
POSITIVE_FLOAT = number_arg(float, minimum=0.0, exclusive=True)
NON_NEGATIVE_FLOAT = number_arg(float, minimum=0.0)


def _add_settings_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("migration settings (default: the migration config)")
    group.add_argument("--downtime-ms", type=POSITIVE_FLOAT, help="downtime limit in ms")
    group.add_argument(
        "--max-bandwidth-mbps", type=POSITIVE_FLOAT, help="cap in Mbit/s on the wire"
    )
    group.add_argument("--transport", help="transport name (see 'plugins list')")
    group.add_argument("--codec", help="page codec name")
    group.add_argument("--verify", choices=["pages", "full"], help="verification depth")
    group.add_argument(
        "--on-stall", choices=["throttle", "abort", "force"], help="when rounds stop shrinking"
    )


def _settings_from(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.downtime_ms is not None:
        out["downtime_limit_ms"] = args.downtime_ms
    if args.max_bandwidth_mbps is not None:
        out["max_bandwidth_bps"] = args.max_bandwidth_mbps * MBIT
    for name in ("transport", "codec", "verify", "on_stall"):
        if getattr(args, name) is not None:
            out[name] = getattr(args, name)
    return out


# -- agent --------------------------------------------------------------------------------
def _configure_agent(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="control API address (config agent.host)")
    parser.add_argument("--port", type=int, help="control API port, 0 = any (agent.port)")
    parser.add_argument("--name", help="host name shown to peers (agent.name)")
    parser.add_argument("--driver", help="hypervisor driver (agent.driver)")
    parser.add_argument("--ready-file", help="write {url, name} as JSON here once serving")


def _run_agent(args: argparse.Namespace) -> int:
    import asyncio

    from novacron_sdk.agent.runner import run_agent

    overrides = dict(getattr(args, "overrides", {}) or {})
    for key in ("host", "port", "name", "driver"):
        if getattr(args, key) is not None:
            overrides[f"agent.{key}"] = getattr(args, key)
    asyncio.run(
        run_agent(
            config_path=args.config,
            overrides=overrides,
            ready_file=args.ready_file,
            announce=_to_stderr,
        )
    )
    return 0


def _to_stderr(line: str) -> None:
    # stdout stays free for output a script might parse; --ready-file is the machine form.
    print(line, file=sys.stderr, flush=True)


# -- migrate ------------------------------------------------------------------------------
def _configure_migrate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("vm", help="VM id or name on the source host")
    parser.add_argument("--to", required=True, metavar="URL", help="destination agent URL")
    parser.add_argument(
        "--from",
        dest="source",
        default=None,
        metavar="URL",
        help="source agent URL (default: http://<agent.host>:<agent.port> from the config)",
    )
    parser.add_argument(
        "--json", metavar="PATH", type=output_file_arg, help="also write the report as JSON here"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_settings_args(parser)


def _run_migrate(args: argparse.Namespace) -> int:
    import asyncio

    from novacron_sdk.agent.auth import client_auth
    from novacron_sdk.cli.commands import cli_config, cli_plugins
    from novacron_sdk.config.sections import AgentSettings
    from novacron_sdk.errors import MigrationError, NovaCronError
    from novacron_sdk.migration.display import ProgressDisplay, print_report, verification_line
    from novacron_sdk.migration.models import (
        MigrationReport,
        MigrationSettings,
        migration_settings,
    )
    from novacron_sdk.migration.remote import migrate_via_agents

    config = cli_config(args)
    source = args.source
    if source is None:
        agent = config.get("agent", AgentSettings)
        source = f"http://{agent.host}:{agent.port}"
    base = config.get("migration", MigrationSettings).model_dump(exclude_unset=True)
    settings = migration_settings(base | _settings_from(args))

    async def run() -> MigrationReport:
        auth = await client_auth(config, cli_plugins(args))
        return await migrate_via_agents(
            args.vm,
            source=source,
            destination=args.to,
            settings=settings,
            progress=display,
            auth=auth,
        )

    with ProgressDisplay(enabled=not args.no_progress) as display:
        try:
            report = asyncio.run(run())
        except MigrationError as exc:
            if isinstance(exc.report, MigrationReport):
                print_report(exc.report)
                try:
                    _write(args.json, exc.report)
                except NovaCronError as write_error:  # the migration's error is the one to see
                    print(f"warning: {write_error}", file=sys.stderr)
            raise
    print_report(report)
    print(verification_line(report))
    _write(args.json, report)
    return 0


def _write(path: str | None, report: Any) -> None:
    """Write ``report`` as JSON to ``path`` (if given); NovaCronError naming it on failure."""
    if path:
        text = json.dumps(report.model_dump(mode="json"), indent=2)
        write_output_file(path, text, what="migration report")


# -- demo ---------------------------------------------------------------------------------
def _configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--memory-mib", type=POSITIVE_INT, default=512, help="VM memory (default 512)"
    )
    parser.add_argument(
        "--pattern",
        default="hot-set",
        choices=["hot-set", "uniform", "sequential", "idle"],
        help="how the workload dirties memory",
    )
    parser.add_argument(
        "--rate-mbps",
        type=NON_NEGATIVE_FLOAT,
        default=40.0,
        help="MB/s the workload writes (default 40; 0 = none)",
    )
    parser.add_argument(
        "--json", metavar="PATH", type=output_file_arg, help="also write the report as JSON here"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_settings_args(parser)


def _run_demo(args: argparse.Namespace) -> int:
    from novacron_sdk.migration.demo import DemoOptions, run_demo

    agent_settings = [
        f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
        for k, v in (getattr(args, "overrides", {}) or {}).items()
    ]
    run_demo(
        DemoOptions(
            memory_mib=args.memory_mib,
            pattern=args.pattern,
            rate_mbps=args.rate_mbps,
            settings=_settings_from(args),
            agent_settings=agent_settings,
            json_path=Path(args.json) if args.json else None,
            progress=not args.no_progress,
        )
    )
    return 0


def register(registry: Registry[CliCommand]) -> None:
    """Register agent, migrate and demo."""
    registry.register(
        "agent",
        CliCommand(
            help="run the host agent (control API + migration endpoint)",
            configure=_configure_agent,
            run=_run_agent,
        ),
    )
    registry.register(
        "migrate",
        CliCommand(
            help="live-migrate a VM between two agents, with a progress bar and a report",
            configure=_configure_migrate,
            run=_run_migrate,
        ),
    )
    registry.register(
        "demo",
        CliCommand(
            help="start two local agents and live-migrate a busy sim VM between them",
            configure=_configure_demo,
            run=_run_demo,
        ),
    )
