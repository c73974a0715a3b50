"""The core ``novacron`` subcommands, and the helpers every command (core or plugin) shares.

A command's ``run`` gets the parsed namespace; :func:`cli_plugins` and :func:`cli_config` give
it the plugin manager and the merged configuration (``--config`` and ``--set`` applied).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from novacron_sdk.cli.interface import CliCommand
    from novacron_sdk.config import NovaCronConfig
    from novacron_sdk.plugin.manager import NovaCronPluginManager
    from novacron_sdk.plugin.registry import Registry

T = TypeVar("T")
N = TypeVar("N", int, float)

_MIGRATION_MODULE = "novacron_sdk.cli.commands.migration"


def register_core_commands(registry: Registry[CliCommand]) -> None:
    """Register plugins, drivers, vm, config and status, and the migration commands."""
    import importlib

    from novacron_sdk.cli.commands import config, drivers, plugins, status, vm

    registry.register("plugins", plugins.COMMAND)
    registry.register("drivers", drivers.COMMAND)
    registry.register("vm", vm.COMMAND)
    registry.register("config", config.COMMAND)
    registry.register("status", status.COMMAND)
    try:
        migration = importlib.import_module(_MIGRATION_MODULE)
    except ModuleNotFoundError as exc:
        # Only a missing migration module itself is tolerated (it ships with the engine);
        # a missing dependency inside it is a real error and propagates.
        if exc.name != _MIGRATION_MODULE:
            raise
        return
    migration.register(registry)


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    """Add the ``--json`` flag every listing command has."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def number_arg(kind: type[N], *, minimum: N, exclusive: bool = False) -> Callable[[str], N]:
    """An argparse ``type``: a finite ``kind`` (int or float) of at least ``minimum``.

    ``exclusive`` makes ``minimum`` itself invalid (``number_arg(float, minimum=0,
    exclusive=True)`` is a positive number). A bad value is a usage error (exit 2) that says
    what is allowed, instead of a validation error deep inside the command.
    """
    noun = "an integer" if kind is int else "a number"
    allowed = f"{noun} {'greater than' if exclusive else 'of at least'} {minimum:g}"

    def parse(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            msg = f"{text!r} is not {noun}: use {allowed}"
            raise argparse.ArgumentTypeError(msg) from None
        if not math.isfinite(value) or value < minimum or (exclusive and value == minimum):
            msg = f"{text!r} is out of range: use {allowed}"
            raise argparse.ArgumentTypeError(msg)
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some of its messages
    return parse


def output_file_arg(text: str) -> str:
    """An argparse ``type`` for a file the command will write (``--json PATH``).

    The directory must exist and be writable, and ``PATH`` must not be a directory: checked
    when the arguments are parsed (a usage error, exit 2, naming the path), not after the
    work is done.
    """
    import os
    from pathlib import Path

    path = Path(text).expanduser()
    parent = path.parent
    if not text or path.is_dir():
        msg = f"{text!r} is a directory, not a file path: name a file to write"
        raise argparse.ArgumentTypeError(msg)
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        msg = (
            f"cannot write {text!r}: its directory {str(parent)!r} {what}; "
            "name a file in an existing directory"
        )
        raise argparse.ArgumentTypeError(msg)
    if not os.access(parent, os.W_OK | os.X_OK):
        msg = f"cannot write {text!r}: its directory {str(parent)!r} is not writable"
        raise argparse.ArgumentTypeError(msg)
    return text


def write_output_file(path: str | os.PathLike[str], text: str, *, what: str = "file") -> None:
    """Write ``text`` to ``path``; an OSError becomes a NovaCronError naming the path."""
    from pathlib import Path

    from novacron_sdk.errors import NovaCronError

    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        msg = f"could not write the {what} to {str(path)!r}: {exc.strerror or exc}"
        raise NovaCronError(msg) from exc


def cli_plugins(args: argparse.Namespace) -> NovaCronPluginManager:
    """The plugin manager the CLI built (or a fresh one when a command runs outside main)."""
    plugins: NovaCronPluginManager | None = getattr(args, "plugins", None)
    if plugins is None:
        from novacron_sdk.plugin.manager import build_plugin_manager

        plugins = build_plugin_manager()
        args.plugins = plugins
    return plugins


def cli_config(args: argparse.Namespace) -> NovaCronConfig:
    """The merged configuration: file (``--config``), environment, then ``--set`` overrides."""
    cached: NovaCronConfig | None = getattr(args, "_novacron_config", None)
    if cached is not None:
        return cached
    from novacron_sdk.config import load_config

    config = load_config(
        getattr(args, "config", None),
        plugins=cli_plugins(args),
        overrides=getattr(args, "overrides", None) or None,
    )
    args._novacron_config = config
    return config


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run one coroutine to completion on a fresh event loop (commands are short-lived)."""
    import asyncio

    return asyncio.run(coroutine)
