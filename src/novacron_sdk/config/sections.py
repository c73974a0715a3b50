"""The core's own config sections (plugins add theirs through ``novacron_add_config_sections``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class AgentSettings(BaseModel):
    """``agent``: the host agent's control API and migration endpoint."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, description="Host name; default: host:port.")
    host: str = Field(default="127.0.0.1", description="Address the control API binds to.")
    port: int = Field(default=8470, ge=0, le=65535, description="Control API port; 0 = any.")
    migration_host: str = Field(default="127.0.0.1", description="Migration endpoint address.")
    migration_port: int = Field(default=0, ge=0, le=65535, description="0 = any free port.")
    migration_advertise: str | None = Field(
        default=None,
        pattern=r"^[^:\s]+:\d{1,5}$",
        description="host:port that sources should connect to, when it differs from the bound "
        "migration endpoint (NAT, a proxy); default: the bound address.",
    )
    driver: str = Field(default="sim", description="Hypervisor driver this agent manages.")
    vcpus: int = Field(
        default=8, ge=1, description="vCPUs registered with the cluster for placement."
    )
    memory_mib: int = Field(
        default=16384, ge=1, description="Memory registered with the cluster for placement."
    )
    incoming_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="A prepared incoming migration whose source never connects, or vanishes "
        "without finishing it, is discarded after this long.",
    )
    finished_retention_s: float = Field(
        default=3600.0,
        ge=300,
        description="A finished migration (its report and events, or an incoming one's state) "
        "is forgotten this long after it ended (at least 300 s: a source may still ask about "
        "a hand-over that long).",
    )


class DriversSettings(BaseModel):
    """``drivers``: the default compute driver and per-driver settings."""

    model_config = ConfigDict(extra="forbid")

    default: str = Field(default="sim", description="Driver used when none is named.")
    settings: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Driver name -> that driver's settings."
    )


class TransportsSettings(BaseModel):
    """``transports``: per-transport settings for the transports the agent builds."""

    model_config = ConfigDict(extra="forbid")

    settings: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Transport name -> that transport's settings (e.g. dwcp: resume_window_s).",
    )


class CodecsSettings(BaseModel):
    """``codecs``: per-codec settings for the page codecs the agent builds."""

    model_config = ConfigDict(extra="forbid")

    settings: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Codec name -> that codec's settings (e.g. dwcp: cache_mib, reference_files).",
    )


class StateSettings(BaseModel):
    """``state``: where cluster state lives."""

    model_config = ConfigDict(extra="forbid")

    store: str = Field(default="sqlite", description="State store name.")
    settings: dict[str, Any] = Field(default_factory=dict, description="Store settings.")


class LoggingSettings(BaseModel):
    """``logging``: log level of the CLI and the agent."""

    model_config = ConfigDict(extra="forbid")

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="WARNING",
        description="Log level of the agent (the CLI uses -v instead); any letter case.",
    )

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value
