"""``novacron plugins list``: every plugin, its status, hooks and registrations.

Listing never resolves lazy references, so no plugin's third-party SDK is imported.
"""

from __future__ import annotations

import argparse

from novacron_sdk.cli.commands import add_json_flag, cli_plugins
from novacron_sdk.cli.interface import CliCommand


def _configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="list plugins with their status and registrations")
    add_json_flag(listing)


def _run(args: argparse.Namespace) -> int:
    from novacron_sdk.cli import output

    infos = cli_plugins(args).plugins()
    if args.json:
        output.print_json([info.as_dict() for info in infos])
        return 0
    rows = []
    failed = []
    for index, info in enumerate(infos):
        registered = "; ".join(
            f"{kind}: {', '.join(names)}" for kind, names in sorted(info.registered.items())
        )
        rows.append(
            (
                info.name,
                info.distribution,
                info.version,
                info.status,
                "yes" if info.essential else "",
                ", ".join(h.removeprefix("novacron_") for h in info.hooks),
                registered,
                info.error,
            )
        )
        if info.status == "failed":
            failed.append(index)
    output.print_table(
        (
            "plugin",
            "distribution",
            "version",
            "status",
            "essential",
            "hooks",
            "registered",
            "error",
        ),
        rows,
        title="NovaCron plugins",
        highlight=failed,
    )
    return 0


COMMAND = CliCommand(help="inspect installed plugins", configure=_configure, run=_run)
