"""Lifecycle hook: plugins contribute ``novacron`` subcommands."""

from __future__ import annotations

from typing import TYPE_CHECKING

from novacron_sdk.plugin._spec import hookspec

if TYPE_CHECKING:
    from novacron_sdk.cli.interface import CliCommand
    from novacron_sdk.plugin.registry import Registry


@hookspec
def novacron_add_cli_commands(registry: Registry[CliCommand]) -> None:
    """Contribute subcommands: ``registry.register("name", CliCommand(...))``.

    Called once per plugin when the CLI builds its parser, so keep it cheap: import heavy
    modules inside the command's ``run``, not at the top of the plugin.
    """
