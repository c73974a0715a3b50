"""Hook implementations of DWCP bandwidth prediction (owned by the prediction work)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from novacron_sdk.plugin import hookimpl

if TYPE_CHECKING:
    from novacron_sdk.plugin.registry import Registry
    from novacron_sdk.prediction.interface import BandwidthPredictor


@hookimpl
def novacron_register_predictors(registry: Registry[type[BandwidthPredictor]]) -> None:
    """Register the DWCP predictors."""
