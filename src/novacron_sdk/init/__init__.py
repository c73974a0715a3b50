"""Process start-up: components contributed by plugins, started in dependency order.

Names are imported lazily: the plugin manager imports ``init.hookspecs`` at every start, and
``novacron --help`` must not pay for asyncio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from novacron_sdk.init.interface import Component, InitContext
    from novacron_sdk.init.orchestrator import (
        ComponentState,
        ComponentStatus,
        Orchestrator,
        build_orchestrator,
        retry_delay,
    )

__all__ = [
    "Component",
    "ComponentState",
    "ComponentStatus",
    "InitContext",
    "Orchestrator",
    "build_orchestrator",
    "retry_delay",
]

_HOMES = {"Component": "interface", "InitContext": "interface"}


def __getattr__(name: str) -> Any:
    if name in __all__:
        module = importlib.import_module(f"novacron_sdk.init.{_HOMES.get(name, 'orchestrator')}")
        return getattr(module, name)
    msg = f"module 'novacron_sdk.init' has no attribute {name!r}"
    raise AttributeError(msg)
