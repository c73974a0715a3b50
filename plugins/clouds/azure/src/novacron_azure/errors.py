"""Map Azure SDK exceptions to the SDK's error hierarchy, keeping the ARM error code."""

from __future__ import annotations

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

from novacron_sdk.errors import DriverError, InvalidStateError, NotFoundError, QuotaExceededError

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
THROTTLING_CODES = frozenset({"TooManyRequests", "RetryableError", "ServerBusy"})
NOT_FOUND_CODES = frozenset({"ResourceNotFound", "NotFound", "ResourceGroupNotFound"})
QUOTA_CODES = frozenset(
    {
        "QuotaExceeded",
        "SkuNotAvailable",
        "AllocationFailed",
        "ZonalAllocationFailed",
        "OverconstrainedAllocationRequest",
        "OverconstrainedZonalAllocationRequest",
    }
)
AUTH_CODES = frozenset(
    {"AuthorizationFailed", "InvalidAuthenticationToken", "AuthenticationFailed"}
)


def arm_code(exc: HttpResponseError) -> str | None:
    """The ARM error code of a failed response (``error.code``), if it had one."""
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    return str(code) if code else None


def _arm_message(exc: HttpResponseError) -> str:
    error = getattr(exc, "error", None)
    message = getattr(error, "message", None)
    return str(message) if message else str(exc.message or exc)


def is_retryable(exc: BaseException) -> bool:
    """Throttling, 5xx and connection failures are transient; everything else is final."""
    if isinstance(exc, HttpResponseError):
        return exc.status_code in TRANSIENT_STATUS or arm_code(exc) in THROTTLING_CODES
    return isinstance(exc, ServiceRequestError | ServiceResponseError)


def map_error(exc: AzureError, action: str) -> DriverError:
    """The SDK error for a failed Azure ``action``; the ARM code is kept in ``.code``."""
    # A credential that cannot get a token raises this with no HTTP response at all.
    if isinstance(exc, ClientAuthenticationError) and exc.status_code is None:
        return DriverError(
            f"Azure {action} failed: no usable credential ({exc}). Set drivers.settings.azure."
            "tenant_id/client_id/client_secret, or configure DefaultAzureCredential (env vars, "
            "managed identity, 'az login')",
            code="ClientAuthenticationError",
        )
    if not isinstance(exc, HttpResponseError):
        return DriverError(f"Azure {action} failed: {exc}", code=type(exc).__name__)
    code = arm_code(exc)
    status = exc.status_code
    text = f"Azure {action} failed: {code or status}: {_arm_message(exc)}"
    kind: type[DriverError] = DriverError
    if code in QUOTA_CODES or (code == "OperationNotAllowed" and "quota" in text.lower()):
        kind, text = QuotaExceededError, f"{text}; request more quota or try another size/region"
    elif code in NOT_FOUND_CODES or (status == 404 and code is None):
        kind = NotFoundError
    elif status == 409 or code in {"OperationNotAllowed", "Conflict"}:
        kind = InvalidStateError
    elif code in AUTH_CODES or status in (401, 403):
        text = f"{text}; check the credential and its role assignments on the subscription"
    elif status == 429 or code in THROTTLING_CODES:
        text = (
            f"{text}; still throttled after the configured retries: raise "
            "drivers.settings.azure.retry.attempts or send fewer requests"
        )
    return kind(text, code=code or (str(status) if status else None))
