"""Settings every cloud driver shares, and validation errors that name the offending key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field

from novacron_sdk.config.checks import parse_settings
from novacron_sdk.models import DriverFeature

CLOUD_FEATURES: frozenset[DriverFeature] = frozenset(
    {
        DriverFeature.CREATE,
        DriverFeature.START_STOP,
        DriverFeature.REBOOT,
        DriverFeature.DESTROY,
        DriverFeature.IMAGES,
        DriverFeature.SIZES,
        DriverFeature.LOCATIONS,
        DriverFeature.TAGS,
        DriverFeature.SPOT,
        DriverFeature.SECURITY_GROUPS,
        DriverFeature.WAIT,
    }
)
"""What the AWS, Azure and GCP drivers all offer; a driver lacking one must not claim it."""


class CloudSettings(BaseModel):
    """Base of a cloud driver's ``drivers.settings.<name>`` section.

    Subclasses set ``section`` to the driver name and add their own fields; unknown keys are
    refused so that a typo is an error, not a silently ignored setting.
    """

    model_config = ConfigDict(extra="forbid")
    section: ClassVar[str] = "cloud"

    wait: bool = Field(default=True, description="Wait for the target state after actions.")
    wait_timeout: float = Field(default=600.0, gt=0)
    wait_interval: float = Field(default=5.0, ge=0)
    retry: bool | dict[str, Any] = Field(
        default=True, description="true, false, or {attempts, base_delay, max_delay}."
    )

    @classmethod
    def parse(cls, settings: Mapping[str, Any]) -> Self:
        """Validate ``settings``, raising ConfigError that names each offending key."""
        prefix = f"drivers.settings.{cls.section}."
        return parse_settings(cls, settings, prefix=prefix, what=f"{cls.section} driver")
