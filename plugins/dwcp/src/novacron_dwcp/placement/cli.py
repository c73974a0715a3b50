"""``novacron place``: read a cluster file and requests, print where each VM goes."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from novacron_sdk.cli.interface import CliCommand
from novacron_sdk.cli.output import echo, error, print_json
from novacron_sdk.errors import NovaCronError

HELP = "place VMs on a cluster described in a file and print the assignment"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``place`` arguments."""
    parser.add_argument("--cluster", type=Path, required=True, help="YAML/JSON with 'hosts'")
    parser.add_argument(
        "--requests", type=Path, help="YAML/JSON with 'requests' (default: the cluster file)"
    )
    parser.add_argument("--policy", default="nova", help="registered placement policy (nova)")
    parser.add_argument(
        "--batch",
        action="store_true",
        help="solve all requests jointly on as few hosts as possible (CP-SAT when installed)",
    )
    parser.add_argument("--time-limit", type=float, default=10.0, help="batch solver seconds (> 0)")
    parser.add_argument("--json", action="store_true", help="print the decisions as JSON")


def run(args: argparse.Namespace) -> int:
    """Place the requests; exit 0 when all are placed, 3 when some are not, 2 on bad input."""
    from novacron_dwcp.placement import cluster_file
    from novacron_dwcp.placement.batch import solve_batch
    from novacron_dwcp.placement.scheduler import explain
    from novacron_sdk.plugin.manager import build_plugin_manager

    if not math.isfinite(args.time_limit) or args.time_limit <= 0:
        error(
            "--time-limit takes the batch solver's budget in seconds, a positive number "
            f"such as 10; got {args.time_limit:g}"
        )
        return 2
    try:
        hosts, requests = cluster_file.load(args.cluster, args.requests)
        summary = ""
        if args.batch:
            result = solve_batch(requests, hosts, time_limit_s=args.time_limit)
            decisions = result.decisions
            summary = (
                f"{result.solver} ({result.status}): {result.hosts_used} host(s) used "
                "(hosts already running VMs count), "
                f"lower bound {result.lower_bound}, {result.wall_s:.2f} s"
            )
            summary += "".join(f"\nnote: {n}" for n in result.notes)
        else:
            # ``novacron`` hands its plugin manager over; a direct call builds one.
            plugins = getattr(args, "plugins", None) or build_plugin_manager()
            policy = plugins.placement.get(args.policy)()
            decisions = policy.place_batch(requests, hosts)
    except NovaCronError as exc:
        error(f"novacron place: {exc}")
        return 2
    if args.json:
        print_json([d.model_dump() for d in decisions])
    else:
        width = max((len(d.request) for d in decisions), default=7)
        for d in decisions:
            if d.host_id is None:
                echo(f"{d.request:<{width}}  -  {explain(d)}")
            else:
                spare = f"  (alternates: {', '.join(d.alternates)})" if d.alternates else ""
                echo(f"{d.request:<{width}}  {d.host_id}{spare}")
        if summary:
            echo(summary)
    return 0 if all(d.host_id for d in decisions) else 3


COMMAND = CliCommand(help=HELP, configure=configure, run=run)
"""The ``place`` subcommand."""
