"""The migration planner: picks transport, codec, predictor and stream count through the hooks.

Order of precedence for each choice: the explicit setting, then the plugins' decision hook
(first non-None answer), then the registered implementation with the highest priority. The
builtin switch-over rule lives here too, so that the engine only asks the hook and this.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from novacron_sdk.encoding.interface import PageCodec
from novacron_sdk.errors import ConfigError
from novacron_sdk.migration.models import MigrationSettings
from novacron_sdk.plugin.manager import NovaCronPluginManager
from novacron_sdk.prediction.interface import BandwidthEstimate, BandwidthPredictor
from novacron_sdk.transport.interface import Endpoint, Transport

SWITCHOVER_OVERHEAD_S = 0.02
"""Time the pause needs besides the last pages and the round trip: device state, checks."""

SMALL_REMAINDER_BYTES = 256 * 1024
"""Below this, the remaining dirty set is sent at switch-over even without an estimate."""


@dataclass
class MigrationPlan:
    """What a migration will use."""

    transport_name: str
    codec_name: str
    predictor_name: str
    streams: int | None
    transport: Transport
    codec: PageCodec
    predictor: BandwidthPredictor
    notes: list[str] = field(default_factory=list)


def _choose(
    plugins: NovaCronPluginManager,
    kind: str,
    explicit: str | None,
    hook: str,
    **hook_args: object,
) -> str:
    registry = plugins.registry(kind)
    if explicit is not None:
        registry.entry(explicit)  # raises naming the known ones
        return explicit
    decided = plugins.call_decision(hook, **hook_args)
    if decided is not None:
        registry.entry(str(decided))
        return str(decided)
    return registry.default_name()


def plan_migration(
    plugins: NovaCronPluginManager,
    settings: MigrationSettings,
    destination: Endpoint,
    *,
    estimate: BandwidthEstimate | None = None,
    rtt_s: float | None = None,
    transport_settings: Mapping[str, Mapping[str, Any]] | None = None,
    codec_settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> MigrationPlan:
    """Choose the parts of a migration to ``destination``.

    ``transport_settings``: transport name -> settings the chosen transport is built with
    (the ``transports`` config section); ``codec_settings`` likewise for the codec (the
    ``codecs`` section).
    """
    transport_name = _choose(
        plugins,
        "transports",
        settings.transport,
        "novacron_choose_transport",
        destination=destination,
        settings=settings,
    )
    codec_name = _choose(
        plugins,
        "codecs",
        settings.codec,
        "novacron_choose_codec",
        estimate=estimate,
        settings=settings,
    )
    predictor_name = _choose(
        plugins, "predictors", settings.predictor, "novacron_choose_predictor", settings=settings
    )
    transport_class = plugins.transports.get(transport_name)
    streams = settings.streams
    if streams is not None and streams > transport_class.max_streams:
        msg = (
            f"streams={streams}: the {transport_name!r} transport carries at most "
            f"{transport_class.max_streams} stream(s) per channel; leave streams unset or "
            "choose a multi-stream transport (see `novacron plugins list`)"
        )
        raise ConfigError(msg)
    if streams is None:
        decided = plugins.call_decision(
            "novacron_choose_stream_count", estimate=estimate, rtt_s=rtt_s, settings=settings
        )
        if decided is not None:
            streams = min(int(decided), transport_class.max_streams)
    return MigrationPlan(
        transport_name=transport_name,
        codec_name=codec_name,
        predictor_name=predictor_name,
        streams=streams,
        transport=transport_class((transport_settings or {}).get(transport_name, {})),
        codec=plugins.codecs.get(codec_name)((codec_settings or {}).get(codec_name, {})),
        predictor=plugins.predictors.get(predictor_name)(),
    )


def builtin_should_switch_over(
    remaining_bytes: int,
    estimate: BandwidthEstimate | None,
    settings: MigrationSettings,
    rtt_s: float | None = None,
) -> bool:
    """Switch over when the remaining wire bytes, sent at the estimate's lower bound, plus the
    hand-over's round trip (``rtt_s``, when measured) fit the downtime limit."""
    if remaining_bytes <= 0:
        return True
    if estimate is None or estimate.lower_bps <= 0:
        return remaining_bytes <= SMALL_REMAINDER_BYTES
    bps = estimate.lower_bps
    if settings.max_bandwidth_bps is not None:
        bps = min(bps, settings.max_bandwidth_bps)
    seconds = remaining_bytes * 8 / bps + SWITCHOVER_OVERHEAD_S + (rtt_s or 0.0)
    return seconds * 1000 <= settings.downtime_limit_ms


def should_switch_over(
    plugins: NovaCronPluginManager,
    remaining_bytes: int,
    estimate: BandwidthEstimate | None,
    settings: MigrationSettings,
    *,
    rtt_s: float | None = None,
) -> bool:
    """Ask the plugins first (``novacron_should_switch_over``), then the builtin rule."""
    decided = plugins.call_decision(
        "novacron_should_switch_over",
        remaining_bytes=remaining_bytes,
        estimate=estimate,
        settings=settings,
        rtt_s=rtt_s,
    )
    if decided is not None:
        return bool(decided)
    return builtin_should_switch_over(remaining_bytes, estimate, settings, rtt_s)
