"""The ``drivers.settings.gcp`` section: validated before the driver touches the Google SDK."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from novacron_sdk.errors import ConfigError


class GcpSettings(BaseModel):
    """Settings of the ``gcp`` driver.

    Without ``credentials_file`` the driver uses application default credentials
    (``GOOGLE_APPLICATION_CREDENTIALS``, ``gcloud auth application-default login``, the
    metadata server); ``project`` falls back to the one the credentials name, then to
    ``GOOGLE_CLOUD_PROJECT``.
    """

    model_config = ConfigDict(extra="forbid")

    project: str | None = None
    zone: str | None = Field(default=None, description="Zone for new VMs and zonal catalogues.")
    credentials_file: str | None = Field(default=None, description="Service account key file.")
    api_endpoint: str | None = Field(
        default=None, description="Compute API endpoint (Private Service Connect, tests)."
    )
    default_image: str = "projects/debian-cloud/global/images/family/debian-12"
    default_machine_type: str = "e2-micro"
    network: str = "global/networks/default"
    subnetwork: str | None = None
    network_tags: list[str] = Field(
        default_factory=list, description="Network tags (firewall targets) for new VMs."
    )
    image_projects: list[str] = Field(
        default_factory=list, description="Projects whose images list_images shows (default: own)."
    )
    wait: bool = True
    wait_timeout: float = Field(default=600.0, gt=0)
    wait_interval: float = Field(default=5.0, ge=0)
    retry: bool | dict[str, Any] = True

    @classmethod
    def parse(cls, settings: Mapping[str, Any]) -> GcpSettings:
        """Validate ``settings``, raising ConfigError that names the offending key."""
        try:
            return cls.model_validate(dict(settings))
        except ValidationError as exc:
            problems = "; ".join(
                f"drivers.settings.gcp.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                for err in exc.errors()
            )
            msg = f"invalid gcp driver settings: {problems}"
            raise ConfigError(msg) from exc
