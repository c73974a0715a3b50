"""pytest parameters shared by the libvirt plugin's tests: the transports a migration uses."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

HAVE_DWCP = importlib.util.find_spec("novacron_dwcp") is not None
"""Whether novacron-dwcp is installed (its transport and the bridge's compression)."""

requires_dwcp = pytest.mark.skipif(not HAVE_DWCP, reason="novacron-dwcp is not installed")


def dwcp_param(*values: object, id: str | None = None) -> Any:
    """A ``pytest.param`` that is skipped when novacron-dwcp is not installed."""
    return pytest.param(*values, id=id, marks=requires_dwcp)


TRANSPORTS: list[Any] = ["tcp", dwcp_param("dwcp")]
"""Every transport a stream migration can take here: builtin TCP, and DWCP when installed."""
