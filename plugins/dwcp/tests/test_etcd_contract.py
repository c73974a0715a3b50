"""The etcd store passes the state-store contract on a real 3-member cluster, with both clients."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from novacron_dwcp.consensus.etcd_grpc import grpc_target
from novacron_dwcp.consensus.etcd_store import EtcdStore
from novacron_sdk.errors import NovaCronError
from novacron_sdk.testing.store import StateStoreContract


class TestEtcdGrpcContract(StateStoreContract):
    """aetcd's gRPC stubs on a multi-address channel."""

    @pytest.fixture
    def store(self, etcd_store_factory: Callable[..., EtcdStore]) -> EtcdStore:
        return etcd_store_factory("grpc")


class TestEtcdGatewayContract(StateStoreContract):
    """etcd's JSON gateway over httpx."""

    @pytest.fixture
    def store(self, etcd_store_factory: Callable[..., EtcdStore]) -> EtcdStore:
        return etcd_store_factory("gateway")


def test_registered_lazily_and_never_the_default() -> None:
    """The plugin registers ``etcd``; SQLite stays the default store."""
    from novacron_dwcp.consensus import hooks
    from novacron_sdk.plugin.manager import build_plugin_manager

    stores = build_plugin_manager(autoload=False, plugins=[("dwcp-consensus", hooks)]).state_stores
    assert stores.get("etcd") is EtcdStore
    assert stores.default_name() == "sqlite"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"client": "carrier-pigeon"}, "grpc"),
        ({"endpoints": " , "}, "empty"),
        ({"timeout_s": 0}, "timeout_s must be a number of seconds > 0"),
        ({"attempt_timeout_s": "2s"}, "attempt_timeout_s must be a number of seconds > 0"),
        ({"endpoints": ["ftp://10.0.0.1:2379"], "client": "grpc"}, "http:// or https://"),
        ({"endpoints": ["etcd-a:2379", "etcd-b:2379"], "client": "grpc"}, "IPv4"),
        ({"ca_fle": "/etc/ca.pem"}, "ca_fle: unknown key .*did you mean 'ca_file'"),
    ],
)
def test_bad_settings_are_refused_with_a_reason(settings: dict[str, object], message: str) -> None:
    """Settings that cannot work fail at construction, saying what to change."""
    with pytest.raises(NovaCronError, match=message):
        EtcdStore(settings)


def test_grpc_target_lists_every_member() -> None:
    """One gRPC target names every endpoint, so gRPC itself fails over between them."""
    target = grpc_target(["http://127.0.0.1:2379", "127.0.0.1:22379", "http://10.0.0.3"])
    assert target == "ipv4:127.0.0.1:2379,127.0.0.1:22379,10.0.0.3:2379"


def test_config_validate_reports_etcd_settings(novacron_cli, tmp_path) -> None:
    """``novacron config validate`` checks the etcd store's settings without connecting (the
    endpoints here do not exist): an unknown key with the closest one, a TLS file missing."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "state:\n  store: etcd\n  settings:\n    endpoints: [https://127.0.0.1:1]\n"
        "    ca_fle: /etc/ca.pem\n"
    )
    result = novacron_cli("config", "validate", str(bad))
    assert result.exit_code == 2
    assert "state.settings.ca_fle: unknown key (did you mean 'ca_file'?)" in (result.stderr)
    missing = tmp_path / "missing.yaml"
    missing.write_text(
        "state:\n  store: etcd\n  settings:\n    endpoints: [https://127.0.0.1:1]\n"
        f"    ca_file: {tmp_path / 'none.pem'}\n"
    )
    result = novacron_cli("config", "validate", str(missing))
    assert result.exit_code == 2
    assert "state.settings.ca_file:" in result.stderr
    assert "not a readable file" in result.stderr
    good = tmp_path / "good.yaml"
    good.write_text(
        "state:\n  store: etcd\n  settings:\n    endpoints: [http://127.0.0.1:1]\n"
        "    client: gateway\n    username: u\n    password: p\n"
    )
    result = novacron_cli("config", "validate", str(good))
    assert result.exit_code == 0, result.stderr
