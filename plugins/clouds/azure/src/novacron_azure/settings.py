"""The ``drivers.settings.azure`` section: validated before the driver touches the Azure SDK."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, SecretStr

from novacron_sdk.clouds.settings import CloudSettings


class AzureSettings(CloudSettings):
    """Settings of the ``azure`` driver.

    Without ``client_id``/``client_secret``/``tenant_id`` the driver uses
    ``DefaultAzureCredential`` (environment, workload identity, managed identity, Azure CLI,
    ...). ``subscription_id`` falls back to ``AZURE_SUBSCRIPTION_ID``.
    """

    section: ClassVar[str] = "azure"

    subscription_id: str | None = None
    resource_group: str | None = Field(
        default=None, description="Group for new VMs and listings (default: whole subscription)."
    )
    location: str | None = Field(default=None, description="Region for new VMs and catalogues.")
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    base_url: str | None = Field(default=None, description="ARM endpoint (sovereign clouds).")
    default_image: str | None = Field(
        default=None, description="publisher:offer:sku:version URN or an image resource id."
    )
    default_size: str = "Standard_B1s"
    subnet_id: str | None = Field(default=None, description="Subnet for the VMs' NICs.")
    network_security_group_id: str | None = None
    admin_username: str = "novacron"
    ssh_public_key: str | None = None
    marketplace_images: list[str] = Field(
        default_factory=list, description="publisher:offer:sku triples that list_images shows."
    )
    stop_mode: Literal["deallocate", "power_off"] = Field(
        default="deallocate", description="deallocate stops billing; power_off keeps the host."
    )
    polling_interval: float | None = Field(
        default=None, ge=0, description="Seconds between operation polls (SDK default 30)."
    )
    wait_timeout: float = Field(default=1800.0, gt=0)
