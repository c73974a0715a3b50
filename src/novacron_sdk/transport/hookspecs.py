"""Hooks of the transport domain."""

from __future__ import annotations

from typing import TYPE_CHECKING

from novacron_sdk.plugin._spec import hookspec

if TYPE_CHECKING:
    from novacron_sdk.migration.models import MigrationSettings
    from novacron_sdk.plugin.registry import Registry
    from novacron_sdk.prediction.interface import BandwidthEstimate
    from novacron_sdk.transport.interface import Endpoint, Transport


@hookspec
def novacron_register_transports(registry: Registry[type[Transport]]) -> None:
    """Register transport classes (subclasses of Transport).

    Called once per plugin, the first time the plugin manager needs this registry (never
    at import time), with the shared registry. Call
    ``registry.register(name, "package.module:Class")``; a lazy reference keeps third-party
    SDKs unimported until the entry is used. A name already taken
    raises DuplicateNameError, and the plugin is reported as failed while others keep working.
    """


@hookspec(firstresult=True)
def novacron_choose_transport(destination: Endpoint, settings: MigrationSettings) -> str | None:
    """Name the transport for a migration to ``destination``.

    Called by the migration planner when ``settings.transport`` is not set; stops at the first
    non-None result. None from every plugin means the registered transport with the highest
    priority.
    """


@hookspec(firstresult=True)
def novacron_choose_stream_count(
    estimate: BandwidthEstimate | None, rtt_s: float | None, settings: MigrationSettings
) -> int | None:
    """Choose how many parallel streams a migration channel starts with.

    Called by the migration planner when ``settings.streams`` is not set, with the predicted
    bandwidth and the measured round-trip time (either may be None when unknown); stops at the
    first non-None result. None from every plugin means the transport decides.
    """
