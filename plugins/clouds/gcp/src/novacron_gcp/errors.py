"""Map Google API errors to the SDK's error hierarchy, keeping Compute Engine's reason code."""

from __future__ import annotations

from typing import Any

import requests
from google.api_core import exceptions as api
from google.auth import exceptions as auth

from novacron_sdk.clouds.retry import parse_retry_after
from novacron_sdk.errors import DriverError, InvalidStateError, NotFoundError, QuotaExceededError

TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded", "backendError"})
NOT_FOUND = frozenset({"notFound", "RESOURCE_NOT_FOUND"})
INVALID_STATE = frozenset(
    {
        "resourceNotReady",
        "RESOURCE_NOT_READY",
        "UNSUPPORTED_OPERATION",
        "resourceInUseByAnotherResource",
    }
)
QUOTA = frozenset(
    {
        "quotaExceeded",
        "QUOTA_EXCEEDED",
        "ZONE_RESOURCE_POOL_EXHAUSTED",
        "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
        "REGION_RESOURCE_POOL_EXHAUSTED",
    }
)


def reason_of(exc: api.GoogleAPICallError) -> str | None:
    """Compute Engine's reason (``notFound``, ``rateLimitExceeded``...) of a failed call."""
    for error in exc.errors or ():
        reason = error.get("reason") if isinstance(error, dict) else None
        if reason:
            return str(reason)
    return exc.reason or None


def is_retryable(exc: BaseException) -> bool:
    """Throttling, 5xx and connection failures are transient; everything else is final."""
    if isinstance(exc, api.GoogleAPICallError):
        status = int(exc.code or 0)
        return status in TRANSIENT_STATUS or reason_of(exc) in RATE_LIMIT_REASONS
    if isinstance(exc, requests.exceptions.SSLError):
        return False  # a certificate problem does not go away on its own
    # The REST transport raises requests' ConnectionError (a dropped connection) and Timeout
    # (connect or read timeout); neither is a subclass of the built-in ConnectionError.
    return isinstance(
        exc,
        auth.TransportError
        | api.RetryError
        | ConnectionError
        | requests.exceptions.ConnectionError
        | requests.exceptions.Timeout,
    )


def retry_after(exc: BaseException) -> float | None:
    """Seconds Google asked to wait before retrying (``Retry-After``), or None."""
    if not isinstance(exc, api.GoogleAPICallError):
        return None
    headers = getattr(exc.response, "headers", None)
    return None if headers is None else parse_retry_after(headers.get("Retry-After"))


def classify(code: str | None, status: int | None) -> type[DriverError]:
    """The SDK error class for a Compute Engine reason code or HTTP status."""
    if code in QUOTA:
        return QuotaExceededError
    if code in NOT_FOUND or status == 404:
        return NotFoundError
    if code in INVALID_STATE or status == 409:
        return InvalidStateError
    return DriverError


def map_error(exc: Exception, action: str) -> DriverError:
    """The SDK error for a failed ``action``; the reason is kept in ``.code``."""
    if isinstance(exc, auth.DefaultCredentialsError):
        reason = str(exc).strip().rstrip(".")  # google-auth's message ends with its own "."
        return DriverError(
            f"GCP {action} failed: {reason}. Set drivers.settings.gcp.credentials_file, or "
            "configure application default credentials "
            "('gcloud auth application-default login', GOOGLE_APPLICATION_CREDENTIALS)",
            code="DefaultCredentialsError",
        )
    if not isinstance(exc, api.GoogleAPICallError):
        return DriverError(f"GCP {action} failed: {exc}", code=type(exc).__name__)
    code = reason_of(exc)
    status = int(exc.code) if exc.code else None
    text = f"GCP {action} failed: {code or status}: {exc.message}"
    kind = classify(code, status)
    if kind is QuotaExceededError:
        text += "; request more quota or try another zone"
    elif status in (401, 403) and code not in RATE_LIMIT_REASONS:
        text += "; check the credentials and their IAM roles on the project"
    elif is_retryable(exc):
        text += (
            "; still failing after the configured retries: raise "
            "drivers.settings.gcp.retry.attempts or send fewer requests"
        )
    return kind(text, code=code or (str(status) if status else None))


def operation_error(operation: Any, action: str) -> DriverError | None:
    """The SDK error for a DONE operation that failed, or None if it succeeded."""
    errors = list(getattr(getattr(operation, "error", None), "errors", []) or [])
    if not errors:
        return None
    first = errors[0]
    code = str(first.code) or None
    status = int(getattr(operation, "http_error_status_code", 0) or 0) or None
    message = "; ".join(str(e.message) for e in errors)
    kind = classify(code, status)
    suffix = "; request more quota or try another zone" if kind is QuotaExceededError else ""
    return kind(f"GCP {action} failed: {code}: {message}{suffix}", code=code)
