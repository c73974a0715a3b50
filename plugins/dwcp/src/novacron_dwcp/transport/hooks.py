"""Hook implementations of the DWCP transport (owned by the transport work)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from novacron_sdk.plugin import hookimpl

if TYPE_CHECKING:
    from novacron_sdk.migration.models import MigrationSettings
    from novacron_sdk.plugin.registry import Registry
    from novacron_sdk.prediction.interface import BandwidthEstimate
    from novacron_sdk.transport.interface import Transport


@hookimpl
def novacron_register_transports(registry: Registry[type[Transport]]) -> None:
    """Register the multi-stream transport (preferred over the builtin TCP one)."""
    registry.register(
        "dwcp",
        "novacron_dwcp.transport.multistream:MultiStreamTransport",
        priority=100,
        description="DWCP multi-stream transport (AMST)",
    )


@hookimpl
def novacron_choose_stream_count(
    estimate: BandwidthEstimate | None, rtt_s: float | None, settings: MigrationSettings
) -> int | None:
    """Leave the stream count to the transport's own adaptation."""
    return None
