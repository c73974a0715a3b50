"""The ``novacron`` command: global options, subcommands from plugins, and error handling.

Subcommands come from the ``cli_commands`` registry, so plugins add their own. Everything
heavy (rich, httpx, drivers, the config loader) is imported by the command that needs it, which
keeps ``novacron --help`` fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from novacron_sdk.__about__ import __version__
from novacron_sdk.errors import NovaCronError

if TYPE_CHECKING:
    from novacron_sdk.plugin.manager import NovaCronPluginManager

log = logging.getLogger("novacron_sdk.cli")

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def parse_set_options(items: Sequence[str]) -> dict[str, str]:
    """Turn ``--set SECTION.KEY=VALUE`` items into config overrides (dotted key -> text).

    The config loader reads each VALUE as YAML, like environment overrides: ``300``, ``true``
    and ``[1, 2]`` become a number, a boolean and a list.
    """
    overrides: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or "." not in key or key.startswith(".") or key.endswith("."):
            msg = f"--set {item!r} is not SECTION.KEY=VALUE (for example --set drivers.default=sim)"
            raise NovaCronError(msg)
        overrides[key] = value
    return overrides


def _verbose_requested(argv: Sequence[str]) -> bool:
    return any(arg in ("-v", "--verbose") or arg.startswith("-vv") for arg in argv)


def build_parser(plugins: NovaCronPluginManager) -> argparse.ArgumentParser:
    """The full parser: global options plus one subparser per registered CLI command."""
    parser = argparse.ArgumentParser(
        prog="novacron",
        description="Manage VMs on your hypervisors and clouds, and move them live.",
        epilog="Run 'novacron COMMAND --help' for a command's options.",
    )
    parser.add_argument("--config", metavar="PATH", help="config file (default: see docs)")
    parser.add_argument(
        "--set",
        dest="set_options",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable; beats file and environment)",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging, tracebacks on errors"
    )
    parser.add_argument("--version", action="version", version=f"novacron {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    registry = plugins.cli_commands
    for name in registry.names():
        entry = registry.entry(name)
        try:
            command = entry.resolve()
            # Dry run on a scratch parser: a command that fails to configure is left out
            # whole instead of leaving half a subparser behind.
            command.configure(argparse.ArgumentParser(prog=f"novacron {name}"))
        except Exception as exc:  # one plugin's broken command must not break the CLI
            log.warning("command %r from plugin %r is unavailable: %s", name, entry.plugin, exc)
            continue
        sub = subparsers.add_parser(name, help=command.help, description=command.help)
        command.configure(sub)
        sub.set_defaults(_run=command.run)
    return parser


def _configure_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s: %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    """Run ``novacron`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    verbose = _verbose_requested(args_list)
    _configure_logging(1 if verbose else 0)
    try:
        return _run(args_list)
    except NovaCronError as exc:
        if verbose:
            log.exception("command failed")
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return EXIT_INTERRUPTED
    except Exception as exc:
        if verbose:
            log.exception("unexpected failure")
        sys.stderr.write(
            f"error: unexpected {type(exc).__name__}: {exc}\n"
            "hint: rerun with -v for the traceback, and report it if it looks like a bug\n"
        )
        return EXIT_UNEXPECTED


def _run(argv: list[str]) -> int:
    from novacron_sdk.plugin.manager import build_plugin_manager

    plugins = build_plugin_manager()
    parser = build_parser(plugins)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    if args.verbose:
        logging.getLogger().setLevel(logging.DEBUG if args.verbose > 1 else logging.INFO)
    run = getattr(args, "_run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    args.overrides = parse_set_options(args.set_options)
    args.plugins = plugins
    code = run(args)
    return int(code)


if __name__ == "__main__":  # pragma: no cover - ``python -m novacron_sdk`` is the entry
    raise SystemExit(main())
