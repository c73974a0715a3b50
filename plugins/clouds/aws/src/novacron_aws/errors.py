"""Map boto3/botocore exceptions to the SDK's error hierarchy, keeping the EC2 error code."""

from __future__ import annotations

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from novacron_sdk.errors import (
    DriverError,
    InvalidStateError,
    NotFoundError,
    QuotaExceededError,
)

THROTTLING_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "SlowDown",
    }
)
TRANSIENT_CODES = frozenset(
    {"InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable", "RequestTimeout"}
)
NOT_FOUND_SUFFIXES = (".NotFound", ".Malformed")
INVALID_STATE_CODES = frozenset({"IncorrectInstanceState", "IncorrectState", "InvalidState"})
QUOTA_CODES = frozenset(
    {
        "InstanceLimitExceeded",
        "InsufficientInstanceCapacity",
        "VcpuLimitExceeded",
        "MaxSpotInstanceCountExceeded",
        "InsufficientCapacity",
        "ResourceLimitExceeded",
    }
)
NETWORK_ERRORS = (
    EndpointConnectionError,
    ConnectionClosedError,
    ConnectTimeoutError,
    ReadTimeoutError,
)


def error_code(exc: ClientError) -> str:
    """The EC2 error code of a ClientError (empty when the response had none)."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_retryable(exc: BaseException) -> bool:
    """Throttling, 5xx and connection failures are transient; everything else is final."""
    if isinstance(exc, ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        code = error_code(exc)
        return code in THROTTLING_CODES or code in TRANSIENT_CODES or status >= 500
    return isinstance(exc, NETWORK_ERRORS)


def map_error(exc: BotoCoreError | ClientError, action: str) -> DriverError:
    """The SDK error for a failed EC2 ``action``; the EC2 code is kept in ``.code``."""
    if isinstance(exc, ClientError):
        return _map_client_error(exc, action)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return DriverError(
            f"EC2 {action} failed: {exc}. Set drivers.settings.aws.profile or access_key_id/"
            "secret_access_key, or configure the AWS default chain (env, ~/.aws, instance role)",
            code=type(exc).__name__,
        )
    if isinstance(exc, NoRegionError):
        return DriverError(
            f"EC2 {action} failed: no region; set drivers.settings.aws.region or "
            "AWS_DEFAULT_REGION",
            code=type(exc).__name__,
        )
    return DriverError(f"EC2 {action} failed: {exc}", code=type(exc).__name__)


def _map_client_error(exc: ClientError, action: str) -> DriverError:
    code = error_code(exc)
    message = str(exc.response.get("Error", {}).get("Message", "")) or str(exc)
    text = f"EC2 {action} failed: {code}: {message}"
    kind: type[DriverError] = DriverError
    if code.endswith(NOT_FOUND_SUFFIXES) or code.endswith("NotFound"):
        kind = NotFoundError
    elif code in INVALID_STATE_CODES:
        kind = InvalidStateError
    elif code in QUOTA_CODES:
        kind, text = QuotaExceededError, f"{text}; request a quota increase or try another zone"
    elif code in THROTTLING_CODES:
        text = (
            f"{text}; still throttled after the configured retries: raise "
            "drivers.settings.aws.retry.attempts or send fewer requests"
        )
    elif code in {"AuthFailure", "UnauthorizedOperation"}:
        text = f"{text}; check the credentials and their IAM policy"
    return kind(text, code=code or None)
