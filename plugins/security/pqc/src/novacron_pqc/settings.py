"""The ``security`` config section this plugin contributes, and where keys live by default."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

GIB = 1024**3


def default_key_dir() -> Path:
    """``$XDG_CONFIG_HOME/novacron`` (``~/.config/novacron`` when unset)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "novacron"


class SecuritySettings(BaseModel):
    """``security``: node identity, enrolled peers, sealed frames and their key rotation."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        default=False,
        description="Seal migration channels and require authenticated peers on the agent API.",
    )
    provider: str = Field(default="pqc", description="Security provider (registry name).")
    identity_key: str = Field(
        default="",
        description="This node's private key file (0600); default: "
        "$XDG_CONFIG_HOME/novacron/node.key.",
    )
    enrolled_dir: str = Field(
        default="",
        description="Directory of enrolled peers' public keys; default: "
        "$XDG_CONFIG_HOME/novacron/enrolled.",
    )
    aead: Literal["aes-256-gcm", "chacha20-poly1305"] = Field(
        default="aes-256-gcm", description="AEAD that seals frames."
    )
    kem_backend: Literal["cryptography", "oqs"] = Field(
        default="cryptography",
        description="ML-KEM implementation; 'oqs' (liboqs-python) only where liboqs is installed.",
    )
    rotate_bytes: int = Field(
        default=32 * GIB,
        ge=1,
        description="Rotate a direction's key after this many payload bytes (both sides agree "
        "on the smaller of their two values).",
    )
    rotate_seconds: float = Field(
        default=3600.0, ge=0, description="Rotate a direction's key after this long; 0 = never."
    )
    handshake_timeout_s: float = Field(
        default=10.0, gt=0, description="Give up a handshake after this long."
    )
    api_session_seconds: float = Field(
        default=600.0,
        gt=0,
        description="Lifetime of an authenticated control-API session before a new handshake.",
    )

    def identity_path(self) -> Path:
        """The private key file, with the default applied and ``~`` expanded."""
        return (
            Path(self.identity_key).expanduser()
            if self.identity_key
            else (default_key_dir() / "node.key")
        )

    def enrolled_path(self) -> Path:
        """The enrolled-keys directory, with the default applied and ``~`` expanded."""
        return (
            Path(self.enrolled_dir).expanduser()
            if self.enrolled_dir
            else (default_key_dir() / "enrolled")
        )
