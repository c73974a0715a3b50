"""Hook implementations of DWCP bandwidth prediction, and the DWCP CLI commands."""

from __future__ import annotations

from typing import TYPE_CHECKING

from novacron_sdk.plugin import hookimpl

if TYPE_CHECKING:
    from novacron_sdk.cli.interface import CliCommand
    from novacron_sdk.plugin.registry import Registry
    from novacron_sdk.prediction.interface import BandwidthPredictor


@hookimpl
def novacron_register_predictors(registry: Registry[type[BandwidthPredictor]]) -> None:
    """Register the DWCP predictors (lazy references: nothing is imported here)."""
    module = "novacron_dwcp.prediction"
    registry.register(
        "learned",
        f"{module}.learned:LearnedPredictor",
        priority=10,
        description="Gradient-boosted trees trained on real traces, calibrated lower bound",
    )
    registry.register(
        "last-sample",
        f"{module}.predictors:LastSamplePredictor",
        priority=-5,
        description="The last measured rate (baseline)",
    )
    registry.register(
        "robust-mpc",
        f"{module}.predictors:RobustMpcPredictor",
        priority=-2,
        description="Harmonic mean of the last 5, lower bound discounted by the max recent error",
    )
    registry.register(
        "holt",
        f"{module}.predictors:HoltPredictor",
        priority=-3,
        description="Holt's damped linear trend",
    )


@hookimpl
def novacron_add_cli_commands(registry: Registry[CliCommand]) -> None:
    """Add ``novacron predict`` and ``novacron place`` (their modules import lazily)."""
    from novacron_dwcp.placement.cli import COMMAND as PLACE
    from novacron_dwcp.prediction.cli import COMMAND as PREDICT

    registry.register("predict", PREDICT)
    registry.register("place", PLACE)
