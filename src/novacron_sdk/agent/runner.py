"""Runs an agent process: config, plugins, init orchestrator, signals, shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

from novacron_sdk.config import load_config
from novacron_sdk.config.sections import LoggingSettings
from novacron_sdk.init import build_orchestrator
from novacron_sdk.init.interface import InitContext
from novacron_sdk.plugin.manager import build_plugin_manager

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
) -> None:
    """Start the agent's components and serve until SIGTERM/SIGINT (or ``stop`` is set)."""
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
    try:
        await orchestrator.start()
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await orchestrator.stop()
        logging.getLogger(__name__).info("agent stopped")
