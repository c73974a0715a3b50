"""Runs an agent process: config, plugins, init orchestrator, signals, shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from novacron_sdk.config import load_config
from novacron_sdk.config.sections import LoggingSettings
from novacron_sdk.init import build_orchestrator
from novacron_sdk.init.interface import InitContext
from novacron_sdk.plugin.manager import build_plugin_manager

if TYPE_CHECKING:
    from novacron_sdk.agent.service import AgentService

log = logging.getLogger(__name__)

AGENT_COMPONENTS = (
    "agent.driver",
    "agent.service",
    "agent.api",
    "cluster.store",
    "cluster.member",
    "cluster.controller",
)
OPTIONAL_COMPONENTS = ("agent.security", "sync.node")
"""Started when a plugin registers them: "agent.security" (novacron-pqc) puts the agent's
authentication into context.values["agent.security"] before the service and the API start;
"sync.node" is novacron-dwcp's multi-region sync."""


async def run_agent(
    *,
    config_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    ready_file: str | None = None,
    stop: asyncio.Event | None = None,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Start the agent's components and serve until SIGTERM/SIGINT (or ``stop`` is set).

    ``announce`` gets one line once the agent serves (where it listens) and one when it has
    stopped; without it both lines are logged at INFO.
    """
    say = announce or log.info
    plugins = build_plugin_manager()
    config = load_config(config_path, plugins=plugins, overrides=overrides)
    logging.getLogger("novacron_sdk").setLevel(config.get("logging", LoggingSettings).level)
    context = InitContext(config=config, plugins=plugins)
    context.values["ready_file"] = ready_file
    optional = tuple(n for n in OPTIONAL_COMPONENTS if n in plugins.init_components)
    orchestrator = build_orchestrator(context, names=AGENT_COMPONENTS + optional)
    context.values["status_provider"] = lambda: [s.as_dict() for s in orchestrator.status()]
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    service: AgentService | None = None
    try:
        await orchestrator.start()
        service = context.values.get("service")
        if service is not None:
            say(listening_line(service))
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await orchestrator.stop()
        if service is not None:
            say(f"agent {service.name} stopped")


def listening_line(service: AgentService) -> str:
    """``agent NAME listening on URL (migrations on HOST:PORT)`` for the start-up message."""
    if service.migration_advertise:
        migrations = service.migration_advertise
    elif service.migration_port:
        migrations = f"{service.migration_host}:{service.migration_port}"
    else:
        migrations = f"{service.migration_host}, a free port per migration transport"
    return f"agent {service.name} listening on {service.url} (migrations on {migrations})"
