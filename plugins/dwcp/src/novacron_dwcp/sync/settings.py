"""The ``sync`` config section (kept apart so that loading config imports no HTTP stack)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SyncSettings(BaseModel):
    """``sync``: replicate the VM inventory between regions (off unless ``region`` is set)."""

    model_config = ConfigDict(extra="forbid")

    region: str | None = Field(default=None, description="This region's name; None = off.")
    peers: dict[str, str] = Field(
        default_factory=dict, description="Other regions: name -> base URL of their sync node."
    )
    host: str = Field(default="127.0.0.1", description="Address the sync endpoint binds to.")
    port: int = Field(default=0, ge=0, le=65535, description="Sync endpoint port; 0 = any.")
    interval_s: float = Field(default=1.0, gt=0, description="Anti-entropy period.")
