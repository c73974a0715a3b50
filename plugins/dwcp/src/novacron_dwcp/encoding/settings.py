"""The DWCP codec's settings: the names both ends read, and the check for unknown ones."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from novacron_sdk.errors import EncodingError

SETTINGS = ("cache_mib", "threads", "method", "max_cache_mib", "native", "reference_files")
"""Every setting the codec reads (encoder and decoder alike); see ``chain.DwcpCodec``."""


def check_settings(settings: Mapping[str, Any]) -> None:
    """EncodingError for a setting the codec does not know (a typo would be ignored)."""
    for key in settings:
        if key not in SETTINGS:
            close = difflib.get_close_matches(str(key), SETTINGS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            msg = f"unknown dwcp codec setting {key!r}{hint}; known: {', '.join(SETTINGS)}"
            raise EncodingError(msg)
