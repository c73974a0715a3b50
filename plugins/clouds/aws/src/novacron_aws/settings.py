"""The ``drivers.settings.aws`` section: validated before the driver touches boto3."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from novacron_sdk.errors import ConfigError


class AwsSettings(BaseModel):
    """Settings of the ``aws`` driver. Every credential field is optional: unset ones fall
    back to boto3's default chain (environment, shared config and credentials files, SSO,
    container and instance roles)."""

    model_config = ConfigDict(extra="forbid")

    region: str | None = Field(default=None, description="Region; default: the boto3 chain.")
    profile: str | None = Field(default=None, description="Named profile in ~/.aws/config.")
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    endpoint_url: str | None = Field(default=None, description="EC2 endpoint (tests, proxies).")
    default_image: str | None = Field(default=None, description="AMI when a spec has none.")
    default_size: str = Field(default="t3.micro", description="Type when a spec has none.")
    subnet_id: str | None = None
    key_name: str | None = None
    security_group_ids: list[str] = Field(default_factory=list)
    instance_types: list[str] = Field(
        default_factory=list, description="Restrict list_sizes to these types (default: all)."
    )
    image_owners: list[str] = Field(
        default_factory=lambda: ["self"], description="Owners whose AMIs list_images shows."
    )
    wait: bool = Field(default=True, description="Wait for the target state after actions.")
    wait_timeout: float = Field(default=600.0, gt=0)
    wait_interval: float = Field(default=5.0, ge=0)
    retry: bool | dict[str, Any] = Field(
        default=True, description="true, false, or {attempts, base_delay, max_delay}."
    )

    @classmethod
    def parse(cls, settings: Mapping[str, Any]) -> AwsSettings:
        """Validate ``settings``, raising ConfigError that names the offending key."""
        try:
            return cls.model_validate(dict(settings))
        except ValidationError as exc:
            problems = "; ".join(
                f"drivers.settings.aws.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                for err in exc.errors()
            )
            msg = f"invalid aws driver settings: {problems}"
            raise ConfigError(msg) from exc
