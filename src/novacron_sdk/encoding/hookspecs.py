"""Hooks of the encoding domain."""

from __future__ import annotations

from typing import TYPE_CHECKING

from novacron_sdk.plugin._spec import hookspec

if TYPE_CHECKING:
    from novacron_sdk.encoding.interface import PageCodec
    from novacron_sdk.migration.models import MigrationSettings
    from novacron_sdk.plugin.registry import Registry
    from novacron_sdk.prediction.interface import BandwidthEstimate


@hookspec
def novacron_register_codecs(registry: Registry[type[PageCodec]]) -> None:
    """Register page codec classes (subclasses of PageCodec).

    Called once per plugin, the first time the plugin manager needs this registry (never
    at import time), with the shared registry. Call
    ``registry.register(name, "package.module:Class")``; a lazy reference keeps third-party
    SDKs unimported until the entry is used. A name already taken
    raises DuplicateNameError, and the plugin is reported as failed while others keep working.
    """


@hookspec(firstresult=True)
def novacron_choose_codec(
    estimate: BandwidthEstimate | None, settings: MigrationSettings
) -> str | None:
    """Name the page codec for a migration.

    Called by the migration planner when ``settings.codec`` is not set, with the bandwidth
    estimate for the link (None when unknown); stops at the first non-None result. None from
    every plugin means the registered codec with the highest priority.
    """
