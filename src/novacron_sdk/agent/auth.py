"""Client-side authentication to secured agents, without the core importing a security plugin.

When a plugin registers the ``agent.security`` init component and the config enables it, the
same component the agents run builds the caller's credentials; otherwise agents are reached
unauthenticated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from novacron_sdk.errors import ConfigError
from novacron_sdk.init import build_orchestrator
from novacron_sdk.init.interface import InitContext

if TYPE_CHECKING:
    import httpx

    from novacron_sdk.config import NovaCronConfig
    from novacron_sdk.plugin.manager import NovaCronPluginManager

SECURITY_COMPONENT = "agent.security"


async def client_auth(config: NovaCronConfig, plugins: NovaCronPluginManager) -> httpx.Auth | None:
    """The httpx auth for talking to agents, or None when no security plugin is enabled."""
    if SECURITY_COMPONENT not in plugins.init_components:
        return None
    try:
        enabled = bool(getattr(config.section("security"), "enabled", False))
    except ConfigError:
        return None
    if not enabled:
        return None
    context = InitContext(config=config, plugins=plugins)
    orchestrator = build_orchestrator(context, names=[SECURITY_COMPONENT])
    await orchestrator.start()
    security = context.values.get(SECURITY_COMPONENT)
    if security is None:
        return None
    auth: httpx.Auth = security.http_auth()
    return auth
