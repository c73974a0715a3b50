"""``novacron config show|validate|schema``: the merged configuration, checks and its schema."""

from __future__ import annotations

import argparse

from novacron_sdk.cli.commands import add_json_flag, cli_config, cli_plugins
from novacron_sdk.cli.interface import CliCommand


def _configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print the merged config and the file it came from")
    add_json_flag(show)
    validate = actions.add_parser("validate", help="check a config file (exit 2 if invalid)")
    validate.add_argument("path", nargs="?", metavar="PATH", help="file (default: --config)")
    actions.add_parser("schema", help="print the JSON Schema of the whole config")


def _show(args: argparse.Namespace) -> int:
    from novacron_sdk.cli import output

    config = cli_config(args)
    source = str(config.path) if config.path is not None else None
    # Secret-looking values (passwords, tokens, keys) are masked: output ends up in logs.
    data = config.as_dict(redact=True)
    if args.json:
        output.print_json({"path": source, "config": data})
        return 0
    import yaml

    output.echo(f"# source: {source or 'no file (defaults, environment and --set)'}")
    output.echo(yaml.safe_dump(data, sort_keys=False).rstrip())
    return 0


def _validate(args: argparse.Namespace) -> int:
    from novacron_sdk.cli import output
    from novacron_sdk.config import load_config
    from novacron_sdk.config.checks import check_plugin_settings

    path = args.path or args.config
    plugins = cli_plugins(args)
    config = load_config(path, plugins=plugins, overrides=args.overrides or None)
    # The names and plugin settings the sections refer to, as the agent checks them at start.
    check_plugin_settings(config, plugins)
    where = str(config.path) if config.path is not None else "defaults (no config file found)"
    output.echo(f"valid: {where}")
    return 0


def _schema(args: argparse.Namespace) -> int:
    from novacron_sdk.cli import output
    from novacron_sdk.config import config_schema

    output.print_json(config_schema(cli_plugins(args)))
    return 0


def _run(args: argparse.Namespace) -> int:
    handlers = {"show": _show, "validate": _validate, "schema": _schema}
    return handlers[args.action](args)


COMMAND = CliCommand(
    help="show, validate and describe the configuration", configure=_configure, run=_run
)
