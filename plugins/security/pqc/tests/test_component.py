"""The ``agent.security`` init component and provider settings, via the real config loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from novacron_pqc.agent import AgentSecurity, SecurityComponent
from novacron_pqc.http_auth import AuthMiddleware
from novacron_pqc.http_client import PqcHttpAuth
from novacron_pqc.identity import NodeIdentity
from novacron_pqc.provider import PqcSecurityProvider
from novacron_sdk.config import load_config
from novacron_sdk.errors import ConfigError, SecurityError
from novacron_sdk.init.interface import InitContext
from novacron_sdk.plugin.manager import build_plugin_manager


def context(tmp_path: Path, **overrides: str) -> InitContext:
    plugins = build_plugin_manager(autoload=False, plugins=[("pqc", _hooks())])
    config = load_config(
        None,
        plugins=plugins,
        environ={},
        overrides={f"security.{k}": v for k, v in overrides.items()},
    )
    return InitContext(config=config, plugins=plugins)


def _hooks() -> object:
    from novacron_pqc import hooks

    return hooks


async def test_disabled_security_gives_none(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    await SecurityComponent(ctx).start()
    assert ctx.values["agent.security"] is None


async def test_enabled_security_builds_the_pieces(tmp_path: Path) -> None:
    NodeIdentity.generate("me").save(tmp_path / "node.key")
    ctx = context(
        tmp_path,
        enabled="true",
        identity_key=str(tmp_path / "node.key"),
        enrolled_dir=str(tmp_path / "enrolled"),
        rotate_bytes="1048576",
    )
    await SecurityComponent(ctx).start()
    security = ctx.values["agent.security"]
    assert isinstance(security, AgentSecurity)
    assert isinstance(security.provider, PqcSecurityProvider)
    assert security.provider.config.rotate_bytes == 1 << 20
    assert isinstance(security.http_auth(), PqcHttpAuth)

    async def app(scope, receive, send) -> None:
        raise AssertionError("not reached in this test")

    assert isinstance(security.wrap_asgi(app), AuthMiddleware)


async def test_missing_key_stops_start_up_with_advice(tmp_path: Path) -> None:
    ctx = context(tmp_path, enabled="true", identity_key=str(tmp_path / "absent.key"))
    with pytest.raises(SecurityError, match="novacron keys generate"):
        await SecurityComponent(ctx).start()


def test_bad_provider_settings_are_a_config_error(tmp_path: Path) -> None:
    identity = NodeIdentity.generate("me")
    with pytest.raises(ConfigError, match="aead"):
        PqcSecurityProvider({"identity": identity, "aead": "rot13"})
