"""Builtin plugin: the core's config sections, init components and CLI commands."""

from __future__ import annotations

from typing import TYPE_CHECKING

from novacron_sdk.plugin import hookimpl

if TYPE_CHECKING:
    from pydantic import BaseModel

    from novacron_sdk.cli.interface import CliCommand
    from novacron_sdk.init.interface import Component
    from novacron_sdk.plugin.registry import Registry


@hookimpl
def novacron_add_config_sections(registry: Registry[type[BaseModel]]) -> None:
    """The core sections: agent, drivers, transports, codecs, migration, state, logging, cluster."""
    from novacron_sdk.config.sections import (
        AgentSettings,
        CodecsSettings,
        DriversSettings,
        LoggingSettings,
        StateSettings,
        TransportsSettings,
    )
    from novacron_sdk.migration.models import MigrationSettings

    registry.register("agent", AgentSettings)
    registry.register("drivers", DriversSettings)
    registry.register("transports", TransportsSettings)
    registry.register("codecs", CodecsSettings)
    registry.register("migration", MigrationSettings)
    registry.register("state", StateSettings)
    registry.register("logging", LoggingSettings)
    from novacron_sdk.cluster.components import ClusterSettings

    registry.register("cluster", ClusterSettings)


@hookimpl
def novacron_register_init_components(registry: Registry[type[Component]]) -> None:
    """The agent's components."""
    from novacron_sdk.agent.components import register_components

    register_components(registry)
    from novacron_sdk.cluster.components import register_components as register_cluster

    register_cluster(registry)


@hookimpl
def novacron_add_cli_commands(registry: Registry[CliCommand]) -> None:
    """The core subcommands."""
    from novacron_sdk.cli.commands import register_core_commands

    register_core_commands(registry)
