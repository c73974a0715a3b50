"""The etcd store with etcd's user authentication, with both clients, on a real etcd member
with authentication on (users and roles made through etcd's own API) whose tokens expire
after 2 s without use.

The whole state-store contract runs as a user that may read and write its prefix; a wrong
password, no user and a prefix the user may not touch give errors that say what to set or
grant, without retrying until the timeout; an expired token is replaced without the caller
noticing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from novacron_dwcp.consensus.etcd_store import EtcdStore
from novacron_dwcp.consensus.local_cluster import LocalEtcdCluster
from novacron_dwcp.consensus.testing import AUTH_USERS
from novacron_sdk.errors import ConfigError, StateStoreError
from novacron_sdk.testing.store import StateStoreContract

pytestmark = pytest.mark.slow

CLIENTS = ["grpc", "gateway"]
TIMEOUT_S = 10.0
USER = "novacron"
PASSWORD, PREFIX = AUTH_USERS[USER]


@pytest.fixture
async def auth_store_factory(
    etcd_auth_cluster: LocalEtcdCluster,
) -> AsyncIterator[Callable[..., EtcdStore]]:
    """``make(client, **settings)``: stores as USER in a fresh namespace under its prefix."""
    stores: list[EtcdStore] = []

    def make(client: str, **extra: object) -> EtcdStore:
        settings: dict[str, object] = {
            "endpoints": etcd_auth_cluster.client_urls,
            "client": client,
            "namespace": f"{PREFIX}{uuid.uuid4().hex}/",
            "timeout_s": TIMEOUT_S,
            "username": USER,
            "password": PASSWORD,
        }
        settings.update(extra)
        store = EtcdStore({k: v for k, v in settings.items() if v is not None})
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


class TestEtcdGrpcWithAuth(StateStoreContract):
    """aetcd's gRPC stubs, as a user with a token."""

    @pytest.fixture
    def store(self, auth_store_factory: Callable[..., EtcdStore]) -> EtcdStore:
        return auth_store_factory("grpc")


class TestEtcdGatewayWithAuth(StateStoreContract):
    """etcd's JSON gateway over httpx, as a user with a token."""

    @pytest.fixture
    def store(self, auth_store_factory: Callable[..., EtcdStore]) -> EtcdStore:
        return auth_store_factory("gateway")


async def _refused_at_once(store: EtcdStore, match: str) -> None:
    started = time.monotonic()
    with pytest.raises(StateStoreError, match=match):
        await store.put("k", b"v")
    assert time.monotonic() - started < TIMEOUT_S, "retried until the timeout"


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_wrong_password_says_which_settings_to_check(
    client: str, auth_store_factory: Callable[..., EtcdStore]
) -> None:
    """etcd refuses the authentication; not retried."""
    store = auth_store_factory(client, password="wrong")
    await _refused_at_once(store, "refused user 'novacron'.*username and password")


@pytest.mark.parametrize("client", CLIENTS)
async def test_no_user_for_a_cluster_that_requires_one_says_so(
    client: str, auth_store_factory: Callable[..., EtcdStore]
) -> None:
    """Authentication is on and the store has no user."""
    store = auth_store_factory(client, username=None, password=None)
    await _refused_at_once(store, r"requires authentication .*: set state.settings.username")


@pytest.mark.parametrize("client", CLIENTS)
async def test_keys_outside_the_users_permission_say_what_to_grant(
    client: str, auth_store_factory: Callable[..., EtcdStore]
) -> None:
    """The user may write under its prefix only; the namespace is outside it."""
    store = auth_store_factory(client, namespace="/elsewhere/")
    await _refused_at_once(store, "grant the user's role readwrite")
    watching = store.watch("k", start_revision=1)
    with pytest.raises(StateStoreError, match="grant the user's role readwrite"):
        await asyncio.wait_for(anext(watching), TIMEOUT_S)


@pytest.mark.parametrize("client", CLIENTS)
async def test_an_expired_token_is_replaced(
    client: str, auth_store_factory: Callable[..., EtcdStore]
) -> None:
    """The member's tokens expire after 2 s without use: after 3 s of quiet, a read, a
    write, a lease and a watch still work, on a new token."""
    store = auth_store_factory(client)
    await store.put("k", b"1")
    first = store.client.token.value  # type: ignore[attr-defined]  # the client's own token
    assert first is not None
    await asyncio.sleep(3.0)  # the token's lifetime (2 s) has passed: etcd dropped it
    start = await store.put("k", b"2")
    assert store.client.token.value not in (None, first)  # type: ignore[attr-defined]
    kv = await store.get("k")
    assert kv is not None
    assert kv.value == b"2"
    await asyncio.sleep(3.0)
    lease = await store.grant_lease(5)
    await store.put("leased", b"x", lease=lease)
    await asyncio.sleep(3.0)
    events = store.watch("k", start_revision=start)
    event = await asyncio.wait_for(anext(events), TIMEOUT_S)
    assert (event.key, event.value) == ("k", b"2")


@pytest.mark.parametrize("client", CLIENTS)
async def test_the_password_can_come_from_a_file(
    client: str, auth_store_factory: Callable[..., EtcdStore], tmp_path: Path
) -> None:
    """A mounted secret: the file's content, its trailing newline dropped."""
    secret = tmp_path / "etcd-password"
    secret.write_text(PASSWORD + "\n")
    store = auth_store_factory(client, password=None, password_file=str(secret))
    await store.put("k", b"v")
    kv = await store.get("k")
    assert kv is not None
    assert kv.value == b"v"


def test_user_settings_that_cannot_work_are_refused(tmp_path: Path) -> None:
    """Checked at construction, naming the setting (no member is contacted)."""
    cases: list[tuple[dict[str, object], str]] = [
        ({"password": "x"}, "password is set without state.settings.username"),
        ({"username": "u"}, "needs exactly one of password and password_file"),
        ({"username": "u", "password": "x", "password_file": "/p"}, "exactly one of"),
        ({"username": "u", "password_file": str(tmp_path / "none")}, "password_file: cannot read"),
        ({"username": "", "password": "x"}, "username must be a non-empty string"),
        ({"username": "u", "password": 1234}, "password must be a string"),
    ]  # fmt: skip
    for settings, message in cases:
        for client in CLIENTS:
            with pytest.raises(ConfigError, match=message):
                EtcdStore({**settings, "client": client})
