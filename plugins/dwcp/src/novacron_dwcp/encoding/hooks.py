"""Hook implementations of the DWCP page encoding (owned by the encoding work)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from novacron_sdk.plugin import hookimpl

if TYPE_CHECKING:
    from novacron_sdk.encoding.interface import PageCodec
    from novacron_sdk.migration.models import MigrationSettings
    from novacron_sdk.plugin.registry import Registry
    from novacron_sdk.prediction.interface import BandwidthEstimate


@hookimpl
def novacron_register_codecs(registry: Registry[type[PageCodec]]) -> None:
    """Register the DWCP codec chain (preferred over the builtin zlib codec)."""
    registry.register(
        "dwcp",
        "novacron_dwcp.encoding.chain:DwcpCodec",
        priority=100,
        description="DWCP chain: zero, duplicate, delta, adaptive zstd/lz4 (HDE)",
    )


@hookimpl
def novacron_choose_codec(
    estimate: BandwidthEstimate | None, settings: MigrationSettings
) -> str | None:
    """The chain adapts its own level to the estimate, so it is always the choice."""
    return None
