"""The agent's security: the ``agent.security`` init component and what the agent calls.

The agent core never imports this plugin. The component puts an :class:`AgentSecurity` (or
None when ``security.enabled`` is false) into the init context as ``"agent.security"``; the
agent wraps its ASGI app with :meth:`AgentSecurity.wrap_asgi`, gives its HTTP clients
:meth:`AgentSecurity.http_auth`, and seals migration channels with :meth:`AgentSecurity.secure`.
"""

from __future__ import annotations

import logging
from typing import ClassVar, Literal

import httpx

from novacron_pqc.http_auth import AsgiApp, AuthMiddleware
from novacron_pqc.http_client import PqcHttpAuth
from novacron_pqc.settings import SecuritySettings
from novacron_sdk.errors import SecurityError
from novacron_sdk.init.interface import Component
from novacron_sdk.plugin.manager import NovaCronPluginManager
from novacron_sdk.security.channel import SecureChannel, make_provider, secure_channel
from novacron_sdk.security.interface import SecurityProvider
from novacron_sdk.transport.interface import Channel

log = logging.getLogger(__name__)


class AgentSecurity:
    """Authentication for one agent: API middleware, client auth, sealed migration channels."""

    def __init__(
        self,
        provider: SecurityProvider,
        settings: SecuritySettings,
        plugins: NovaCronPluginManager,
    ) -> None:
        self.provider = provider
        self.settings = settings
        self.plugins = plugins

    def wrap_asgi(self, app: AsgiApp) -> AuthMiddleware:
        """``app`` behind authentication; only ``GET /health`` stays open."""
        return AuthMiddleware(app, self.provider, session_seconds=self.settings.api_session_seconds)

    def http_auth(self) -> httpx.Auth:
        """A fresh client-side auth (one API session per client)."""
        return PqcHttpAuth(self.provider)

    async def secure(
        self,
        channel: Channel,
        role: Literal["initiator", "responder"],
        *,
        expect_peer: str | None = None,
    ) -> SecureChannel:
        """Handshake and seal ``channel``; ``expect_peer`` pins the peer's fingerprint."""
        sealed = await secure_channel(self.plugins, channel, role, self.provider)
        fingerprint = getattr(sealed.session, "peer_fingerprint", None)
        if expect_peer is not None and fingerprint != expect_peer:
            await sealed.close()
            msg = (
                f"migration peer {sealed.peer_id!r} is not the agent the control API "
                "authenticated; refusing to send the VM there"
            )
            raise SecurityError(msg)
        return sealed


class SecurityComponent(Component):
    """Loads the node's keys and enrolled peers when ``security.enabled`` is true."""

    name: ClassVar[str] = "agent.security"

    async def start(self) -> None:
        """Build the provider now, so a missing or unsafe key file stops start-up."""
        settings = self.context.config.get("security", SecuritySettings)
        if not settings.enabled:
            log.warning("security is disabled: the agent API and migrations are unauthenticated")
            self.context.values["agent.security"] = None
            return
        provider = make_provider(self.context.plugins, settings.provider, settings.model_dump())
        self.context.values["agent.security"] = AgentSecurity(
            provider, settings, self.context.plugins
        )
        enrolled = getattr(provider, "enrolled", None)
        log.info(
            "security enabled (%s): %s enrolled peer(s)",
            settings.provider,
            len(enrolled) if enrolled is not None else "?",
        )
