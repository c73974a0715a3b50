"""The ``drivers.settings.gcp`` section: validated before the driver touches the Google SDK."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from novacron_sdk.clouds.settings import CloudSettings


class GcpSettings(CloudSettings):
    """Settings of the ``gcp`` driver.

    Without ``credentials_file`` the driver uses application default credentials
    (``GOOGLE_APPLICATION_CREDENTIALS``, ``gcloud auth application-default login``, the
    metadata server); ``project`` falls back to the one the credentials name, then to
    ``GOOGLE_CLOUD_PROJECT``.
    """

    section: ClassVar[str] = "gcp"

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
    request_timeout: float = Field(
        default=60.0,
        gt=0,
        description="Seconds one Compute Engine API request may take before it is retried.",
    )
