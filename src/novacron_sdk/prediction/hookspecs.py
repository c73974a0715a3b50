"""Hooks of the prediction domain."""

from __future__ import annotations

from typing import TYPE_CHECKING

from novacron_sdk.plugin._spec import hookspec

if TYPE_CHECKING:
    from novacron_sdk.migration.models import MigrationSettings
    from novacron_sdk.plugin.registry import Registry
    from novacron_sdk.prediction.interface import BandwidthPredictor


@hookspec
def novacron_register_predictors(registry: Registry[type[BandwidthPredictor]]) -> None:
    """Register bandwidth predictor classes (subclasses of BandwidthPredictor).

    Called once per plugin, the first time the plugin manager needs this registry (never
    at import time), with the shared registry. Call
    ``registry.register(name, "package.module:Class")``; a lazy reference keeps third-party
    SDKs unimported until the entry is used. A name already taken
    raises DuplicateNameError, and the plugin is reported as failed while others keep working.
    """


@hookspec(firstresult=True)
def novacron_choose_predictor(settings: MigrationSettings) -> str | None:
    """Name the bandwidth predictor for a migration.

    Called by the migration planner when ``settings.predictor`` is not set; stops at the first
    non-None result. None from every plugin means the registered predictor with the highest
    priority.
    """
