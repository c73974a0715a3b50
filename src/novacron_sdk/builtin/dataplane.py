"""Builtin plugin: TCP transport, zero-page + zlib codec, EWMA/harmonic predictors, first-fit."""

from __future__ import annotations

from typing import TYPE_CHECKING

from novacron_sdk.plugin import hookimpl

if TYPE_CHECKING:
    from novacron_sdk.encoding.interface import PageCodec
    from novacron_sdk.placement.interface import PlacementPolicy
    from novacron_sdk.plugin.registry import Registry
    from novacron_sdk.prediction.interface import BandwidthPredictor
    from novacron_sdk.transport.interface import Transport


@hookimpl
def novacron_register_transports(registry: Registry[type[Transport]]) -> None:
    """Register the single-stream TCP transport."""
    registry.register(
        "tcp",
        "novacron_sdk.builtin.tcp_transport:TcpTransport",
        description="One TCP connection; 20-byte headers with sequence number and CRC-32",
    )


@hookimpl
def novacron_register_codecs(registry: Registry[type[PageCodec]]) -> None:
    """Register the builtin codecs."""
    registry.register(
        "zlib",
        "novacron_sdk.builtin.zlib_codec:ZeroZlibCodec",
        description="Zero-page elimination, then zlib",
    )
    registry.register(
        "raw",
        "novacron_sdk.builtin.zlib_codec:RawCodec",
        priority=-10,
        description="Pages as they are (baseline)",
    )


@hookimpl
def novacron_register_predictors(registry: Registry[type[BandwidthPredictor]]) -> None:
    """Register the builtin predictors."""
    registry.register(
        "ewma",
        "novacron_sdk.builtin.predictors:EwmaPredictor",
        description="Exponentially weighted moving average",
    )
    registry.register(
        "harmonic",
        "novacron_sdk.builtin.predictors:HarmonicMeanPredictor",
        priority=-1,
        description="Harmonic mean of the last 5 samples",
    )


@hookimpl
def novacron_register_placement_policies(registry: Registry[type[PlacementPolicy]]) -> None:
    """Register first-fit placement."""
    registry.register(
        "first-fit",
        "novacron_sdk.builtin.first_fit:FirstFitPolicy",
        description="First host with enough capacity",
    )
