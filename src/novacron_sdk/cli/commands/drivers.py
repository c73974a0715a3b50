"""``novacron drivers list``: the compute drivers (hypervisors and clouds) plugins registered.

Features come from the driver class, which means importing it: that is done for the core's
builtin drivers (cheap) and for every driver only with ``--features``.
"""

from __future__ import annotations

import argparse
from typing import Any

from novacron_sdk.cli.commands import add_json_flag, cli_plugins
from novacron_sdk.cli.interface import CliCommand
from novacron_sdk.errors import NovaCronError

_BUILTIN_PREFIX = "builtin-"


def _configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="list compute drivers")
    add_json_flag(listing)
    listing.add_argument(
        "--features",
        action="store_true",
        help="import every driver to show its features (may load third-party SDKs)",
    )


def describe_drivers(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One dict per compute driver: name, kind, plugin, description, features (or None)."""
    plugins = cli_plugins(args)
    rows: list[dict[str, Any]] = []
    for kind, registry in (("hypervisor", plugins.hypervisors), ("cloud", plugins.clouds)):
        for entry in registry.entries():
            row: dict[str, Any] = {
                "name": entry.name,
                "kind": kind,
                "plugin": entry.plugin,
                "description": entry.description,
                "features": None,
                "error": None,
            }
            if args.features or entry.plugin.startswith(_BUILTIN_PREFIX):
                try:
                    driver_class = entry.resolve()
                except NovaCronError as exc:
                    row["error"] = str(exc)
                else:
                    row["features"] = sorted(str(f) for f in driver_class.features)
                    row["description"] = entry.description or driver_class.description
            rows.append(row)
    return rows


def _features_cell(features: list[str] | None) -> str:
    if features is None:
        return "(--features)"
    # A driver whose features depend on what it connects to (libvirt) declares none per class.
    return ", ".join(features) or "(decided per connection)"


def _run(args: argparse.Namespace) -> int:
    from novacron_sdk.cli import output

    rows = describe_drivers(args)
    if args.json:
        output.print_json(rows)
        return 0
    output.print_table(
        ("driver", "kind", "plugin", "description", "features"),
        [
            (
                r["name"],
                r["kind"],
                r["plugin"],
                r["description"],
                r["error"] or _features_cell(r["features"]),
            )
            for r in rows
        ],
        title="Compute drivers",
        highlight=[i for i, r in enumerate(rows) if r["error"]],
    )
    return 0


COMMAND = CliCommand(help="list compute drivers", configure=_configure, run=_run)
