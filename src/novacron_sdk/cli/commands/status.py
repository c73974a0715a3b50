"""``novacron status``: this machine's setup, or a running agent's health with ``--agent URL``."""

from __future__ import annotations

import argparse
from typing import Any

from novacron_sdk.cli.commands import add_json_flag, cli_config, cli_plugins
from novacron_sdk.cli.interface import CliCommand
from novacron_sdk.errors import NovaCronError

_TIMEOUT_S = 10.0


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agent", metavar="URL", help="ask the agent at URL (GET /v1/status)")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="show hosts, the controller and VM owners from the configured state store",
    )
    add_json_flag(parser)


def local_status(args: argparse.Namespace) -> dict[str, Any]:
    """Config file in use, plugin failures and registered compute drivers."""
    plugins = cli_plugins(args)
    config = cli_config(args)
    return {
        "config": str(config.path) if config.path is not None else None,
        "plugins": len(plugins.plugins()),
        "failures": [{"name": i.name, "error": i.error} for i in plugins.failures()],
        "drivers": plugins.compute_drivers(),
    }


def fetch_agent_status(url: str) -> dict[str, Any]:
    """GET ``{url}/v1/status`` and return its JSON; errors become NovaCronError."""
    import httpx

    target = url.rstrip("/") + "/v1/status"
    try:
        response = httpx.get(target, timeout=_TIMEOUT_S)
        response.raise_for_status()
        data = response.json()
    except httpx.HTTPStatusError as exc:
        msg = f"the agent at {url} answered {exc.response.status_code} for {target}"
        raise NovaCronError(msg) from exc
    except httpx.HTTPError as exc:
        msg = f"could not reach the agent at {url} ({exc}); is 'novacron agent' running there?"
        raise NovaCronError(msg) from exc
    except ValueError as exc:
        msg = f"the agent at {url} did not return JSON from {target}"
        raise NovaCronError(msg) from exc
    if not isinstance(data, dict):
        msg = f"the agent at {url} returned an unexpected status document"
        raise NovaCronError(msg)
    return data


def _print_local(status: dict[str, Any]) -> None:
    from novacron_sdk.cli import output

    output.echo(f"config: {status['config'] or 'none found (defaults)'}")
    output.echo(f"plugins: {status['plugins']} ({len(status['failures'])} failed)")
    for failure in status["failures"]:
        output.warn(f"plugin {failure['name']!r} failed: {failure['error']}")
    output.print_table(
        ("driver", "kind"), sorted(status["drivers"].items()), title="Compute drivers"
    )


def _print_agent(url: str, status: dict[str, Any]) -> None:
    from novacron_sdk.cli import output

    host = status.get("host") or {}
    output.echo(
        f"agent {url}: host {host.get('name', '?')} ({host.get('driver', '?')}), "
        f"{host.get('vcpus', '?')} vCPUs, {host.get('memory_mib', '?')} MiB; "
        f"{status.get('vms', 0)} VMs, {status.get('migrations', 0)} migrations"
    )
    components = status.get("components") or []
    degraded = [i for i, c in enumerate(components) if c.get("state") != "running"]
    output.print_table(
        ("component", "state", "critical", "attempts", "error"),
        [
            (
                c.get("name"),
                c.get("state"),
                "yes" if c.get("critical") else "no",
                c.get("attempts"),
                c.get("error"),
            )
            for c in components
        ],
        title="Components",
        highlight=degraded,
    )


def _run(args: argparse.Namespace) -> int:
    from novacron_sdk.cli import output

    if args.agent:
        status = fetch_agent_status(args.agent)
        if args.json:
            output.print_json(status)
        else:
            _print_agent(args.agent, status)
        return 0
    if args.cluster:
        from novacron_sdk.cluster.cli import cluster_report

        return cluster_report(cli_config(args), cli_plugins(args), as_json=args.json)
    local = local_status(args)
    if args.json:
        output.print_json(local)
    else:
        _print_local(local)
    return 0


COMMAND = CliCommand(help="show local setup or an agent's health", configure=_configure, run=_run)
