"""``novacron vm list|show|create|start|stop|reboot|destroy``: VMs of one compute driver,
or, with ``--agent URL``, of a running host agent (through its HTTP API, with the agent's own
driver: what ``novacron migrate`` then moves).

The sim driver keeps its VM *records* (not their memory) in a state file, so a VM created by
one ``novacron`` process is listed by the next. Without ``drivers.settings.sim.state_path``
in the config, the CLI uses ``$XDG_STATE_HOME/novacron/sim-vms.json``
(``~/.local/state/novacron/sim-vms.json`` when XDG_STATE_HOME is unset).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from novacron_sdk.cli.commands import add_json_flag, cli_config, cli_plugins, run_async
from novacron_sdk.cli.interface import CliCommand
from novacron_sdk.errors import NovaCronError

if TYPE_CHECKING:
    from novacron_sdk.agent.client import AgentClient
    from novacron_sdk.client import AsyncClient
    from novacron_sdk.models import VM, VMSpec

SIM = "sim"
_VM_ACTIONS = ("start", "stop", "reboot", "destroy")


def default_sim_state_path(environ: dict[str, str] | None = None) -> Path:
    """Where the CLI keeps sim VM records when the config names no ``state_path``."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "novacron" / "sim-vms.json"


def _workload(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        msg = f"--workload must be a JSON object, got {text!r}: {exc}"
        raise argparse.ArgumentTypeError(msg) from exc
    if not isinstance(value, dict):
        msg = f'--workload must be a JSON object like \'{{"pattern": "idle"}}\', got {text!r}'
        raise argparse.ArgumentTypeError(msg)
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--driver", metavar="NAME", help="compute driver (default: config)")
    parser.add_argument(
        "--agent",
        metavar="URL",
        help="act on the VMs of the agent at URL (its own driver), e.g. http://127.0.0.1:8470",
    )
    add_json_flag(parser)


def _configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    _common(actions.add_parser("list", help="list VMs"))
    show = actions.add_parser("show", help="show one VM")
    show.add_argument("vm_id", metavar="ID", help="VM id or name")
    _common(show)
    create = actions.add_parser("create", help="create and start a VM")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--vcpus", type=int, default=1)
    create.add_argument("--memory-mib", type=int, default=512)
    create.add_argument("--image")
    create.add_argument("--size")
    create.add_argument("--location")
    create.add_argument(
        "--workload",
        type=_workload,
        metavar="JSON",
        help='workload model for drivers that simulate one, e.g. sim: {"pattern": "hot-set"}',
    )
    _common(create)
    for action in _VM_ACTIONS:
        sub = actions.add_parser(action, help=f"{action} a VM")
        sub.add_argument("vm_id", metavar="ID", help="VM id or name")
        _common(sub)


def make_client(args: argparse.Namespace) -> AsyncClient:
    """An AsyncClient on the CLI's config and plugins, with the sim's default state file."""
    from novacron_sdk.client import AsyncClient
    from novacron_sdk.config.sections import DriversSettings

    config = cli_config(args)
    drivers = config.get("drivers", DriversSettings)
    name = getattr(args, "driver", None) or drivers.default
    defaults: dict[str, dict[str, Any]] = {}
    if name == SIM and not drivers.settings.get(SIM, {}).get("state_path"):
        path = default_sim_state_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            msg = (
                f"cannot create the sim state directory {str(path.parent)!r}: "
                f"{exc.strerror or exc}; point XDG_STATE_HOME at a writable directory or set "
                "drivers.settings.sim.state_path"
            )
            raise NovaCronError(msg) from exc
        defaults[SIM] = {"state_path": str(path)}
    return AsyncClient(config=config, plugins=cli_plugins(args), driver_defaults=defaults)


def _vm_row(vm: VM) -> tuple[Any, ...]:
    return (vm.id, vm.name, vm.state.value, vm.vcpus, vm.memory_mib, vm.host, vm.driver)


_VM_COLUMNS = ("id", "name", "state", "vcpus", "memory MiB", "host", "driver")


def _spec(args: argparse.Namespace) -> VMSpec:
    """The VM request of ``vm create``; NovaCronError naming every invalid field."""
    from pydantic import ValidationError

    from novacron_sdk.config.checks import validation_problems
    from novacron_sdk.models import VMSpec

    try:
        return VMSpec(
            name=args.name,
            vcpus=args.vcpus,
            memory_mib=args.memory_mib,
            image=args.image,
            size=args.size,
            location=args.location,
            extra={"workload": args.workload} if args.workload is not None else {},
        )
    except ValidationError as exc:
        msg = f"invalid VM request: {validation_problems(exc, VMSpec)}"
        raise NovaCronError(msg) from exc


async def _act(args: argparse.Namespace) -> Any:
    if args.agent:
        return await _act_on_agent(args)
    async with make_client(args) as client:
        driver = args.driver
        if args.action == "list":
            return await client.list_vms(driver=driver)
        if args.action == "show":
            return await client.get_vm(args.vm_id, driver=driver)
        if args.action == "create":
            return await client.create_vm(_spec(args), driver=driver)
        if args.action == "destroy":
            await client.destroy(args.vm_id, driver=driver)
            return None
        method = getattr(client, args.action)
        return await method(args.vm_id, driver=driver)


async def _agent_client(args: argparse.Namespace) -> AgentClient:
    """A client of ``--agent``, authenticated when the security plugin is enabled."""
    from novacron_sdk.agent.auth import client_auth
    from novacron_sdk.agent.client import AgentClient

    auth = await client_auth(cli_config(args), cli_plugins(args))
    return AgentClient(args.agent, auth=auth)


async def _act_on_agent(args: argparse.Namespace) -> Any:
    if args.driver:
        msg = (
            f"--driver {args.driver} with --agent: an agent manages the VMs of the driver its "
            "own config names; drop --driver (or drop --agent to use a local driver)"
        )
        raise NovaCronError(msg)
    spec = _spec(args) if args.action == "create" else None
    async with await _agent_client(args) as agent:
        if args.action == "list":
            return await agent.list_vms()
        if args.action == "show":
            return await agent.get_vm(args.vm_id)
        if spec is not None:
            return await agent.create_vm(spec)
        if args.action == "destroy":
            await agent.destroy_vm(args.vm_id)
            return None
        return await agent.vm_action(args.vm_id, args.action)


def _run(args: argparse.Namespace) -> int:
    from novacron_sdk.cli import output

    result = run_async(_act(args))
    if args.action == "destroy":
        if args.json:
            output.print_json({"destroyed": args.vm_id})
        else:
            output.echo(f"destroyed {args.vm_id}")
        return 0
    if isinstance(result, list):
        if args.json:
            output.print_json([vm.model_dump(mode="json") for vm in result])
        else:
            output.print_table(_VM_COLUMNS, [_vm_row(vm) for vm in result], title="VMs")
        return 0
    if args.json:
        output.print_json(result.model_dump(mode="json"))
    else:
        output.print_mapping(result.model_dump(mode="json"), title=f"VM {result.name}")
    return 0


COMMAND = CliCommand(help="list, create and control VMs", configure=_configure, run=_run)
