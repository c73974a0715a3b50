"""The ``drivers.settings.libvirt`` section: checked before the driver opens a connection."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from novacron_sdk.config.checks import parse_settings
from novacron_sdk.errors import ConfigError

SECTION = "drivers.settings.libvirt"


ABSOLUTE = (
    "must be an absolute path (QEMU and the agent resolve the migration sockets from "
    "different working directories)"
)


def check_absolute(key: str, path: str) -> None:
    """ConfigError naming ``key`` unless ``path`` is absolute."""
    if not path.startswith("/"):
        msg = f"libvirt setting {key} {ABSOLUTE}; got {path!r}"
        raise ConfigError(msg)


class LibvirtSettings(BaseModel):
    """Every key the libvirt driver reads (documented in docs/libvirt.md).

    Unknown keys are refused, so that a typo (``urii``) is an error naming the closest known
    key instead of a setting silently ignored.
    """

    model_config = ConfigDict(extra="forbid")

    uri: str = Field(default="qemu:///system", description="Any libvirt URI.")
    domain_type: str | None = Field(
        default=None, description="kvm, qemu, test...; default: kvm when the host offers it."
    )
    shutdown_timeout_s: float = Field(
        default=30.0, ge=0, description="How long stop() waits before forcing the domain off."
    )
    events: bool = Field(default=True, description="Subscribe to domain lifecycle events.")
    # Stream migration between agents; agent_migration.StreamSettings reads these.
    migration_dir: str | None = Field(
        default=None, description="Where QEMU finds the migration sockets (same on every host)."
    )
    migration_local_dir: str | None = Field(
        default=None, description="migration_dir as the agent sees it."
    )
    migration_uri: str | None = Field(
        default=None, description="The libvirt URI other hosts reach this daemon at."
    )
    migration_path_map: dict[str, str] = Field(
        default_factory=dict, description="Source directory -> directory here."
    )
    page_references: StrictBool = Field(
        default=True, description="Send pages of the direct-boot kernel/initrd as references."
    )

    @field_validator("migration_dir", "migration_local_dir")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(ABSOLUTE)
        return value

    @field_validator("migration_path_map", mode="before")
    @classmethod
    def _no_map(cls, value: object) -> object:
        return {} if value is None else value  # "migration_path_map:" with no value

    @classmethod
    def parse(cls, settings: Mapping[str, Any]) -> LibvirtSettings:
        """Validate ``settings``, raising ConfigError that names each offending key."""
        return parse_settings(cls, settings, prefix=f"{SECTION}.", what="libvirt driver")
