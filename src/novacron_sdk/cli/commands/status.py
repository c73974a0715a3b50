"""``novacron status``: this machine's setup, or a running agent's health with ``--agent URL``.

An agent with security enabled is asked with the credentials ``novacron vm --agent`` uses.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from novacron_sdk.cli.commands import add_json_flag, cli_config, cli_plugins, run_async
from novacron_sdk.cli.interface import CliCommand
from novacron_sdk.errors import NovaCronError, SecurityError

if TYPE_CHECKING:
    import httpx

    from novacron_sdk.plugin.manager import NovaCronPluginManager

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


async def fetch_agent_status(
    url: str, *, auth: httpx.Auth | None = None, plugins: NovaCronPluginManager | None = None
) -> dict[str, Any]:
    """GET ``{url}/v1/status`` and return its JSON; errors become NovaCronError.

    ``auth`` authenticates to an agent with security enabled (see
    :func:`novacron_sdk.agent.auth.client_auth`); without it, a 401 says how to get it.
    """
    import httpx

    from novacron_sdk.agent.auth import authentication_required

    target = url.rstrip("/") + "/v1/status"
    try:
        async with httpx.AsyncClient(timeout=_TIMEOUT_S, auth=auth) as http:
            response = await http.get(target)
        if response.status_code == 401 and auth is None:
            raise SecurityError(authentication_required(url, plugins))
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


async def _agent_status(args: argparse.Namespace) -> dict[str, Any]:
    """``--agent``: with the credentials ``novacron vm --agent`` and ``migrate`` use."""
    from novacron_sdk.agent.auth import client_auth

    plugins = cli_plugins(args)
    auth = await client_auth(cli_config(args), plugins)
    return await fetch_agent_status(args.agent, auth=auth, plugins=plugins)


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
        status = run_async(_agent_status(args))
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
