"""Hooks of the migration engine: progress events and the switch-over decision."""

from __future__ import annotations

from typing import TYPE_CHECKING

from novacron_sdk.plugin._spec import hookspec

if TYPE_CHECKING:
    from novacron_sdk.migration.models import MigrationEvent, MigrationSettings
    from novacron_sdk.prediction.interface import BandwidthEstimate


@hookspec
def novacron_migration_event(event: MigrationEvent) -> None:
    """A migration made progress, switched over, completed, failed or rolled back.

    Broadcast to every plugin from the engine's event loop: return quickly, never block.
    Exceptions are logged and do not affect the migration.
    """


@hookspec(firstresult=True)
def novacron_should_switch_over(
    remaining_bytes: int,
    estimate: BandwidthEstimate | None,
    settings: MigrationSettings,
    rtt_s: float | None,
) -> bool | None:
    """Decide whether to pause the VM now and send the remaining dirty set.

    Called by the engine after every pre-copy round with the wire bytes the remaining dirty
    pages are expected to take (after the first round, which sends every page, at their full
    size; later at the last round's wire ratio) and the round trip to the destination measured
    at the handshake (``rtt_s``; the hand-over waits one: VERIFY out, VERIFIED back). Stops at
    the first non-None result. None from every plugin means the builtin rule: switch over when
    ``remaining_bytes`` at the estimate's lower bound, plus ``rtt_s`` and a fixed 20 ms, fits
    ``settings.downtime_limit_ms``. Implementations may leave out ``rtt_s`` from their
    signature (pluggy passes only the arguments they name).
    """
