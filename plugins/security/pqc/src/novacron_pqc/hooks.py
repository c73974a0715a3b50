"""The module named by the ``novacron_sdk`` entry point: this plugin's hook implementations.

Cheap to import: ``cryptography`` is loaded only when the provider or a command is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from novacron_sdk.plugin import hookimpl

if TYPE_CHECKING:
    from pydantic import BaseModel

    from novacron_sdk.cli.interface import CliCommand
    from novacron_sdk.init.interface import Component
    from novacron_sdk.plugin.registry import Registry
    from novacron_sdk.security.interface import SecurityProvider


@hookimpl
def novacron_register_security_providers(registry: Registry[type[SecurityProvider]]) -> None:
    """Register the hybrid post-quantum provider as ``pqc``."""
    registry.register(
        "pqc",
        "novacron_pqc.provider:PqcSecurityProvider",
        description="X25519+ML-KEM-768 key exchange, Ed25519+ML-DSA-65 identity, AEAD frames",
    )


@hookimpl
def novacron_add_config_sections(registry: Registry[type[BaseModel]]) -> None:
    """The ``security`` section."""
    from novacron_pqc.settings import SecuritySettings

    registry.register("security", SecuritySettings)


@hookimpl
def novacron_register_init_components(registry: Registry[type[Component]]) -> None:
    """``agent.security``: loads keys and builds the agent's authentication pieces."""
    registry.register(
        "agent.security",
        "novacron_pqc.agent:SecurityComponent",
        description="Node keys, enrolled peers, sealed migration channels, API authentication",
    )


@hookimpl
def novacron_add_cli_commands(registry: Registry[CliCommand]) -> None:
    """``novacron keys``: generate, show, enroll, list."""
    from novacron_pqc.cli import keys_command

    registry.register("keys", keys_command())
