"""The DWCP codec's settings: the names both ends read, and the check for unknown ones."""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any

from novacron_dwcp.encoding import compress
from novacron_sdk.errors import EncodingError

SETTINGS = ("cache_mib", "threads", "method", "max_cache_mib", "native", "reference_files")
"""Every setting the codec reads (encoder and decoder alike); see ``chain.DwcpCodec``."""
# The header declares the store's capacity in pages as a u32: 2**32 pages of 4 KiB.
MAX_MIB = 1 << 24
METHOD_NAMES = tuple(method.name for method in compress.METHODS)


def check_settings(settings: Mapping[str, Any]) -> None:
    """EncodingError for a setting the codec does not know (a typo would be ignored)."""
    for key in settings:
        if key not in SETTINGS:
            close = difflib.get_close_matches(str(key), SETTINGS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            msg = f"unknown dwcp codec setting {key!r}{hint}; known: {', '.join(SETTINGS)}"
            raise EncodingError(msg)
    # Both ends check every value, whichever end reads it.
    for name in ("cache_mib", "max_cache_mib"):
        value = settings.get(name)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not 0 <= value <= MAX_MIB
        ):
            msg = f"codec setting {name} must be a number of MiB from 0 to {MAX_MIB}, not {value!r}"
            raise EncodingError(msg)
    threads = settings.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):  # fmt: skip
        msg = f"codec setting threads must be a positive integer, not {threads!r}"
        raise EncodingError(msg)
    method = settings.get("method")
    if method is not None and method not in METHOD_NAMES:
        msg = f"codec setting method={method!r} is unknown; use one of {list(METHOD_NAMES)}"
        raise EncodingError(msg)
    native = settings.get("native")
    if native is not None and not isinstance(native, bool):
        msg = f"codec setting native must be True or False, not {native!r}"
        raise EncodingError(msg)
