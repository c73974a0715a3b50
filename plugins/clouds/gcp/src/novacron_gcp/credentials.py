"""Credentials for the gcp driver from a key file named in the config."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from google.auth import credentials as auth_credentials
from google.oauth2 import credentials as oauth2_credentials
from google.oauth2 import service_account

from novacron_sdk.errors import DriverError

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
# google-auth leaves these factories unannotated; the aliases state what they return.
_service_account: Callable[..., auth_credentials.Credentials] = (
    service_account.Credentials.from_service_account_info
)
_authorized_user: Callable[..., auth_credentials.Credentials] = (
    oauth2_credentials.Credentials.from_authorized_user_info
)


def load_credentials_file(path: str) -> tuple[auth_credentials.Credentials, str | None]:
    """Credentials from a service account key or an authorized-user file.

    Only these two types are read from a path named in the config: google-auth warns that
    loading arbitrary credential configurations (which may run commands) from a file is unsafe;
    other types work through GOOGLE_APPLICATION_CREDENTIALS.
    """
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        msg = f"drivers.settings.gcp.credentials_file {path!r} cannot be read as JSON: {exc}"
        raise DriverError(msg, code="InvalidCredentialsFile") from exc
    kind = info.get("type") if isinstance(info, dict) else None
    if kind == "service_account":
        return _service_account(info, scopes=SCOPES), info.get("project_id")
    if kind == "authorized_user":
        # A user credential names no project (its quota project is only for billing).
        return _authorized_user(info, scopes=SCOPES), None
    msg = (
        f"drivers.settings.gcp.credentials_file {path!r} has type {kind!r}; use a service "
        "account key or an authorized-user file, or point GOOGLE_APPLICATION_CREDENTIALS at it"
    )
    raise DriverError(msg, code="InvalidCredentialsFile")
