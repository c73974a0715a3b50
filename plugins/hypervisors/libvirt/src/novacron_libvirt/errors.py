"""Map libvirt errors to the SDK's error hierarchy, keeping libvirt's error code name."""

from __future__ import annotations

from typing import Any

import libvirt

from novacron_sdk.errors import (
    DriverError,
    FeatureNotSupportedError,
    InvalidStateError,
    NotFoundError,
)

NOT_FOUND_CODES = frozenset(
    {
        libvirt.VIR_ERR_NO_DOMAIN,
        libvirt.VIR_ERR_NO_STORAGE_POOL,
        libvirt.VIR_ERR_NO_STORAGE_VOL,
        libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT,
    }
)
INVALID_STATE_CODES = frozenset({libvirt.VIR_ERR_OPERATION_INVALID})
UNSUPPORTED_CODES = frozenset({libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_OPERATION_UNSUPPORTED})
_CODE_NAMES: dict[int, str] = {
    value: name
    for name, value in vars(libvirt).items()
    if name.startswith("VIR_ERR_")
    and isinstance(value, int)
    # VIR_ERR_NONE/WARNING/ERROR are levels sharing small values with real codes.
    and name not in {"VIR_ERR_NONE", "VIR_ERR_WARNING", "VIR_ERR_ERROR"}
}


def code_name(exc: Any) -> str:
    """libvirt's name for the error code of ``exc`` (``VIR_ERR_NO_DOMAIN``...)."""
    code = exc.get_error_code()
    return _CODE_NAMES.get(code, f"VIR_ERR_{code}") if code is not None else "VIR_ERR_UNKNOWN"


def translate(exc: Any, action: str) -> DriverError:
    """The SDK error for libvirtError ``exc`` raised while doing ``action``."""
    code = exc.get_error_code()
    detail = exc.get_error_message() or str(exc)
    name = code_name(exc)
    if code in NOT_FOUND_CODES:
        return NotFoundError(f"{action}: {detail}", code=name)
    if code in INVALID_STATE_CODES:
        return InvalidStateError(f"{action}: {detail} (check the VM's state first)", code=name)
    if code in UNSUPPORTED_CODES:
        return FeatureNotSupportedError(
            f"{action}: {detail} (this libvirt connection does not support it)", code=name
        )
    return DriverError(f"{action}: {detail}", code=name)


def is_not_found(exc: Any) -> bool:
    """Whether libvirtError ``exc`` means the object does not exist."""
    return exc.get_error_code() in NOT_FOUND_CODES
