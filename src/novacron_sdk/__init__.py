"""NovaCron SDK: VMs on your own hypervisors and public clouds, one typed async API.

The public entry points are :class:`AsyncClient` and its sync twin :class:`Client`. They are
imported lazily so that ``import novacron_sdk`` stays cheap for the CLI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from novacron_sdk.__about__ import __version__

if TYPE_CHECKING:
    from novacron_sdk.client import AsyncClient, Client

__all__ = ["AsyncClient", "Client", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("AsyncClient", "Client"):
        from novacron_sdk import client

        return getattr(client, name)
    msg = f"module 'novacron_sdk' has no attribute {name!r}"
    raise AttributeError(msg)
