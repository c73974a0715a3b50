"""Map Azure SDK exceptions to the SDK's error hierarchy, keeping the ARM error code."""

from __future__ import annotations

import logging

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

from novacron_sdk.clouds.retry import parse_retry_after
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
NO_CREDENTIAL_HELP = (
    "Set drivers.settings.azure.tenant_id, client_id and client_secret (or AZURE_TENANT_ID, "
    "AZURE_CLIENT_ID and AZURE_CLIENT_SECRET), use a managed identity, or run 'az login'; "
    "-v logs why each credential was unavailable"
)
_CHAIN_LOGGER = "azure.identity._credentials.chained"
_CHAIN_REPORT = "failed to retrieve a token from the included credentials"


class _ChainReportAtInfo(logging.Filter):
    """azure-identity logs a failed DefaultAzureCredential's report (a dozen lines) as a
    WARNING and then raises it; the driver's error already says what to set. The log record
    is demoted to INFO: shown with -v, not a second copy of the report by default."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or _CHAIN_REPORT not in record.getMessage():
            return True
        record.levelno, record.levelname = logging.INFO, "INFO"
        return logging.getLogger(record.name).isEnabledFor(logging.INFO)


def demote_credential_chain_report() -> None:
    """Install the filter on azure-identity's chain logger (once per process)."""
    chain_logger = logging.getLogger(_CHAIN_LOGGER)
    if not any(isinstance(f, _ChainReportAtInfo) for f in chain_logger.filters):
        chain_logger.addFilter(_ChainReportAtInfo())


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


def retry_after(exc: BaseException) -> float | None:
    """Seconds ARM asked to wait before retrying (``retry-after-ms``, ``x-ms-retry-after-ms``
    or ``Retry-After``), or None."""
    response = getattr(exc, "response", None) if isinstance(exc, HttpResponseError) else None
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        millis = parse_retry_after(headers.get(name))
        if millis is not None:
            return millis / 1000.0
    return parse_retry_after(headers.get("Retry-After"))


def map_error(exc: AzureError, action: str) -> DriverError:
    """The SDK error for a failed Azure ``action``; the ARM code is kept in ``.code``."""
    # A credential that cannot get a token raises this with no HTTP response at all. Its
    # message is the chain's whole report, a line per credential: the first line says it all.
    if isinstance(exc, ClientAuthenticationError) and exc.status_code is None:
        lines = str(exc.message or exc).strip().splitlines()
        reason = (lines[0] if lines else type(exc).__name__).strip().rstrip(".")
        return DriverError(
            f"Azure {action} failed: no usable Azure credential ({reason}). {NO_CREDENTIAL_HELP}",
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
