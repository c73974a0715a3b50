"""Process start-up: components contributed by plugins, started in dependency order."""

from __future__ import annotations

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
