"""The ``drivers.settings.aws`` section: validated before the driver touches boto3."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, SecretStr

from novacron_sdk.clouds.settings import CloudSettings


class AwsSettings(CloudSettings):
    """Settings of the ``aws`` driver. Every credential field is optional: unset ones fall
    back to boto3's default chain (environment, shared config and credentials files, SSO,
    container and instance roles)."""

    section: ClassVar[str] = "aws"

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
