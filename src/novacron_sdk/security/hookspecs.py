"""Hooks of the security domain."""

from __future__ import annotations

from typing import TYPE_CHECKING

from novacron_sdk.plugin._spec import hookspec

if TYPE_CHECKING:
    from novacron_sdk.plugin.registry import Registry
    from novacron_sdk.security.interface import SecurityProvider


@hookspec
def novacron_register_security_providers(registry: Registry[type[SecurityProvider]]) -> None:
    """Register security provider classes (subclasses of SecurityProvider).

    Called once per plugin, the first time the plugin manager needs this registry (never
    at import time), with the shared registry. Call
    ``registry.register(name, "package.module:Class")``; a lazy reference keeps third-party
    SDKs unimported until the entry is used. A name already taken
    raises DuplicateNameError, and the plugin is reported as failed while others keep working.
    """
