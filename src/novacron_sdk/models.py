"""Shared pydantic models: what every compute driver, the engine and the CLI speak.

Models are frozen where they describe observed state, so that a caller cannot mistake a
local edit for a change on the provider. Validation errors name the field and the reason.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

T = TypeVar("T")

_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")


class VMState(StrEnum):
    """The lifecycle state of a VM, mapped from each provider's own vocabulary."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"
    REBOOTING = "rebooting"
    MIGRATING = "migrating"
    TERMINATED = "terminated"
    ERROR = "error"
    UNKNOWN = "unknown"


class DriverFeature(StrEnum):
    """Capabilities a compute driver may advertise in its ``features`` set.

    Callers check ``feature in driver.features`` before relying on one; a driver never
    advertises what it does not do.
    """

    CREATE = "create"
    START_STOP = "start_stop"
    REBOOT = "reboot"
    DESTROY = "destroy"
    PAUSE = "pause"
    IMAGES = "images"
    SIZES = "sizes"
    LOCATIONS = "locations"
    HOSTS = "hosts"
    LIVE_MIGRATION_SOURCE = "live_migration_source"
    LIVE_MIGRATION_SINK = "live_migration_sink"
    STREAM_MIGRATION_SOURCE = "stream_migration_source"
    STREAM_MIGRATION_SINK = "stream_migration_sink"
    MEMORY_IMAGE = "memory_image"
    THROTTLE = "throttle"
    EVENTS = "events"
    TAGS = "tags"
    SPOT = "spot"
    SECURITY_GROUPS = "security_groups"
    WAIT = "wait"


NonEmptyStr = Annotated[str, Field(min_length=1)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VMSpec(BaseModel):
    """What to create: the caller's request, validated before any driver sees it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="VM name: letters, digits, '.', '_', '-'; 1-63 chars.")
    vcpus: int = Field(default=1, ge=1, le=1024)
    memory_mib: int = Field(default=512, ge=1, le=16 * 1024 * 1024)
    disk_gib: int = Field(default=0, ge=0)
    image: str | None = Field(default=None, description="Image id or name known to the driver.")
    size: str | None = Field(default=None, description="Size (instance type) id, if any.")
    location: str | None = Field(default=None, description="Location (region/zone/host) id.")
    tags: dict[str, str] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Driver-specific settings, documented per driver."
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            msg = (
                f"invalid VM name {value!r}: use 1-63 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
            raise ValueError(msg)
        return value


class VM(_Model):
    """A VM as a driver sees it now."""

    id: str
    name: str
    state: VMState
    driver: str
    vcpus: int = 0
    memory_mib: int = 0
    image: str | None = None
    size: str | None = None
    location: str | None = None
    host: str | None = None
    created_at: datetime | None = None
    private_ips: tuple[str, ...] = ()
    public_ips: tuple[str, ...] = ()
    tags: dict[str, str] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)


class Image(_Model):
    """A bootable image (AMI, disk image, libvirt volume...)."""

    id: str
    name: str
    driver: str
    extra: dict[str, Any] = Field(default_factory=dict)


class Size(_Model):
    """A VM size or instance type."""

    id: str
    name: str
    vcpus: int
    memory_mib: int
    disk_gib: int = 0
    gpus: int = 0
    price_per_hour: float | None = None
    driver: str
    extra: dict[str, Any] = Field(default_factory=dict)


class Location(_Model):
    """Where a VM can live: a region, a zone, or a hypervisor host."""

    id: str
    name: str
    country: str | None = None
    parent: str | None = Field(default=None, description="Region of a zone, if any.")
    driver: str
    extra: dict[str, Any] = Field(default_factory=dict)


class Host(_Model):
    """A hypervisor host and its capacity."""

    id: str
    name: str
    driver: str
    address: str | None = Field(default=None, description="Agent URL or libvirt URI.")
    vcpus: int
    memory_mib: int
    gpus: int = 0
    disk_gib: int = 0
    labels: dict[str, str] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)


class Page(_Model, Generic[T]):
    """One page of a paginated listing. ``next_token`` is None on the last page."""

    items: tuple[T, ...]
    next_token: str | None = None


class VMEvent(_Model):
    """A lifecycle change of a VM, broadcast through ``novacron_vm_event``."""

    vm_id: str
    driver: str
    state: VMState
    reason: str = ""
    timestamp: datetime
