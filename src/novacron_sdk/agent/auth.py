"""Client-side authentication to secured agents, without the core importing a security plugin.

When a plugin registers the ``agent.security`` init component and the config enables it, the
same component the agents run builds the caller's credentials; otherwise agents are reached
unauthenticated. :func:`authentication_required` is what to tell a caller without credentials
whom an agent answered 401.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from novacron_sdk.errors import ConfigError, InitError, SecurityError
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
    try:
        await orchestrator.start()
    except InitError as exc:
        # Said as for a starting agent ("critical component ... start again"); a command
        # only needs the reason, its missing or unreadable key file, say.
        cause = exc.__cause__
        if not isinstance(cause, SecurityError | ConfigError):
            raise
        msg = f"security is enabled, but this node's credentials cannot be loaded: {cause}"
        kind = SecurityError if isinstance(cause, SecurityError) else ConfigError
        raise kind(msg) from cause
    security = context.values.get(SECURITY_COMPONENT)
    if security is None:
        return None
    auth: httpx.Auth = security.http_auth()
    return auth


def authentication_required(url: str, plugins: NovaCronPluginManager | None = None) -> str:
    """The error for a caller running without security that the agent at ``url`` refused."""
    msg = (
        f"the agent at {url} requires authentication: run with security enabled "
        "(--set security.enabled=true) and this node's key enrolled there "
        "(on the agent's host: novacron keys enroll NODE.pub)"
    )
    if plugins is not None and SECURITY_COMPONENT not in plugins.init_components:
        msg += "; no installed plugin provides security: pip install novacron-pqc"
    return msg
