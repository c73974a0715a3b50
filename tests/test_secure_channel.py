"""SecureChannel over real transports on 127.0.0.1, through the registered ``pqc`` provider.

Needs the novacron-pqc plugin (``pip install -e plugins/security/pqc``); skipped without it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from novacron_sdk.builtin.tcp_transport import TcpTransport
from novacron_sdk.errors import FrameError, SecurityError, TransportError
from novacron_sdk.plugin.manager import NovaCronPluginManager, build_plugin_manager
from novacron_sdk.security.channel import SecureChannel, secure_channel
from novacron_sdk.transport.interface import Channel, Endpoint, Transport

identity = pytest.importorskip("novacron_pqc.identity")
provider_mod = pytest.importorskip("novacron_pqc.provider")


def node(tmp_path: Path, name: str) -> tuple[Any, Any]:
    return identity.NodeIdentity.generate(name), identity.EnrolledKeys(tmp_path / name)


@pytest.fixture(scope="module")
def plugins() -> NovaCronPluginManager:
    return build_plugin_manager()


@pytest.fixture
def nodes(tmp_path: Path) -> dict[str, tuple[Any, Any]]:
    a, b, c = node(tmp_path, "a"), node(tmp_path, "b"), node(tmp_path, "stranger")
    a[1].enroll(b[0].public)
    b[1].enroll(a[0].public)
    return {"a": a, "b": b, "stranger": c}


def provider(nodes: dict[str, tuple[Any, Any]], name: str, **settings: Any) -> Any:
    ident, enrolled = nodes[name]
    return provider_mod.PqcSecurityProvider({"identity": ident, "enrolled": enrolled, **settings})


@contextlib.asynccontextmanager
async def connected(
    transport: Transport, serve: Callable[[Channel], Any], *, listening: Transport | None = None
) -> AsyncIterator[Channel]:
    """A channel of ``transport`` to a listener (of ``listening``, by default the same) that
    serves with ``serve``; both closed when the block ends (also when it fails, so that a
    failed test leaks no socket into the next one)."""
    listener = await (listening or transport).listen(Endpoint(), serve)
    try:
        channel = await transport.connect(listener.endpoint)
        try:
            yield channel
        finally:
            await channel.close()
    finally:
        await listener.close()


@pytest.mark.parametrize("transport_name", ["tcp", "dwcp"])
async def test_sealed_echo_over_transport(plugins, nodes, transport_name: str) -> None:
    if transport_name not in plugins.transports:
        pytest.skip(f"{transport_name} transport is not installed")
    cls = plugins.transports.get(transport_name)
    frames = [os.urandom(n) for n in (0, 10, 70_000, 3 << 19, 3 << 19, 10)]
    seen_on_wire: list[bytes] = []

    async def serve(raw: Channel) -> None:
        sealed = await secure_channel(plugins, raw, "responder", provider(nodes, "b"))
        for _ in frames:
            await sealed.send(await sealed.recv())
        await sealed.drain()

    class Spy(Channel):
        """Records what the transport really carries."""

        def __init__(self, inner: Channel) -> None:
            self.inner = inner

        async def send(self, frame: bytes) -> None:
            seen_on_wire.append(bytes(frame))
            await self.inner.send(frame)

        async def recv(self) -> bytes:
            return await self.inner.recv()

        async def drain(self) -> None:
            await self.inner.drain()

        async def close(self) -> None:
            await self.inner.close()

        def stats(self):
            return self.inner.stats()

    async with connected(cls(), serve) as raw:
        sealed = await secure_channel(
            plugins, Spy(raw), "initiator", provider(nodes, "a", rotate_bytes=1 << 20)
        )
        assert isinstance(sealed, SecureChannel)
        assert sealed.peer_id == "b"
        for frame in frames:
            await sealed.send(frame)
            assert await sealed.recv() == frame
        stats = sealed.stats()
        assert stats.payload_bytes_sent == sum(map(len, frames))
        assert stats.wire_bytes_sent > stats.payload_bytes_sent
        assert sealed.session.send_epoch == 2  # 1 MiB budget: new keys before frames 5 and 6
    big = frames[3]
    assert all(big[:64] not in sent for sent in seen_on_wire)


async def test_default_provider_comes_from_the_registry(plugins, nodes, tmp_path: Path) -> None:
    """secure_channel with provider=None/name builds the registered provider from settings."""
    ident, _ = nodes["b"]
    ident.save(tmp_path / "b.key")
    settings_b = {"identity_key": str(tmp_path / "b.key"), "enrolled_dir": str(tmp_path / "b")}
    assert plugins.security.default_name() == "pqc"
    done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def serve(raw: Channel) -> None:
        sealed = await secure_channel(plugins, raw, "responder", settings=settings_b)
        done.set_result(sealed.peer_id)

    async with connected(plugins.transports.get("tcp")(), serve) as raw:
        sealed = await secure_channel(plugins, raw, "initiator", provider(nodes, "a"))
        assert sealed.peer_id == "b"
        assert await asyncio.wait_for(done, 20) == "a"


async def handshake_pair(plugins, initiator: Any, responder: Any) -> tuple[Any, Any]:
    results: asyncio.Queue[Any] = asyncio.Queue()

    async def serve(raw: Channel) -> None:
        try:
            results.put_nowait(await secure_channel(plugins, raw, "responder", responder))
        except SecurityError as exc:
            results.put_nowait(exc)

    mine: Any
    async with connected(plugins.transports.get("tcp")(), serve) as raw:
        try:
            mine = await secure_channel(plugins, raw, "initiator", initiator)
        except SecurityError as exc:
            mine = exc
        theirs = await asyncio.wait_for(results.get(), 20)
    return mine, theirs


async def test_unenrolled_peer_is_rejected_on_both_sides(plugins, nodes) -> None:
    mine, theirs = await handshake_pair(plugins, provider(nodes, "stranger"), provider(nodes, "b"))
    assert isinstance(theirs, SecurityError)
    assert "'stranger'" in str(theirs)
    assert "not enrolled here" in str(theirs)
    assert isinstance(mine, SecurityError)
    assert "peer refused the handshake" in str(mine)
    assert "not enrolled" in str(mine)


async def test_initiator_rejects_unenrolled_responder(plugins, nodes) -> None:
    nodes["stranger"][1].enroll(nodes["a"][0].public)  # the stranger trusts a; a does not
    mine, theirs = await handshake_pair(plugins, provider(nodes, "a"), provider(nodes, "stranger"))
    assert isinstance(mine, SecurityError)
    assert "not enrolled here" in str(mine)
    assert isinstance(theirs, SecurityError)
    assert "refused" in str(theirs)


async def test_wrong_key_for_an_enrolled_name_is_rejected(plugins, nodes, tmp_path) -> None:
    impostor = identity.NodeIdentity.generate("a")  # claims a's name with other keys
    enrolled = identity.EnrolledKeys(tmp_path / "impostor")
    enrolled.enroll(nodes["b"][0].public)
    fake = provider_mod.PqcSecurityProvider({"identity": impostor, "enrolled": enrolled})
    mine, theirs = await handshake_pair(plugins, fake, provider(nodes, "b"))
    assert isinstance(theirs, SecurityError)
    assert "wrong key" in str(theirs)
    assert isinstance(mine, SecurityError)
    assert "wrong key" in str(mine)


async def test_tampered_replayed_frames_on_a_live_channel(plugins, nodes) -> None:
    """A man in the middle that alters or repeats sealed frames is caught by the receiver."""
    received: asyncio.Queue[Any] = asyncio.Queue()

    async def serve(raw: Channel) -> None:
        sealed = await secure_channel(plugins, raw, "responder", provider(nodes, "b"))
        for _ in range(2):
            try:
                received.put_nowait(await sealed.recv())
            except SecurityError as exc:
                received.put_nowait(exc)

    async with connected(plugins.transports.get("tcp")(), serve) as raw:
        sealed = await secure_channel(plugins, raw, "initiator", provider(nodes, "a"))
        assert sealed.session.peer_accepts_unchecked_frames  # only the AEAD guards the frames
        frame = bytes(sealed.session.seal(b"genuine"))
        await raw.send(frame)
        await raw.send(frame)  # replay
        assert await asyncio.wait_for(received.get(), 20) == b"genuine"
        replayed = await asyncio.wait_for(received.get(), 20)
        assert isinstance(replayed, SecurityError)
        assert "replayed frame" in str(replayed)

    async with connected(plugins.transports.get("tcp")(), serve) as raw:
        sealed = await secure_channel(plugins, raw, "initiator", provider(nodes, "a"))
        tampered = bytearray(sealed.session.seal(b"genuine"))
        tampered[-1] ^= 1
        await raw.send(bytes(tampered))
        error = await asyncio.wait_for(received.get(), 20)
        assert isinstance(error, SecurityError)
        assert "altered in transit" in str(error)
        after = await asyncio.wait_for(received.get(), 20)  # the channel stays failed
        assert isinstance(after, SecurityError)


async def test_secrets_never_reach_the_logs(plugins, nodes, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    ident_a = nodes["a"][0]
    mine, _theirs = await handshake_pair(plugins, provider(nodes, "a"), provider(nodes, "b"))
    await handshake_pair(plugins, provider(nodes, "stranger"), provider(nodes, "b"))
    session = mine.session
    secrets_ = [
        ident_a._ed25519_seed,
        ident_a._mldsa_seed,
        session._send._secret,
        session._recv._secret,
        session._exporter,
        session.export("http request"),
    ]
    text = caplog.text + repr(session) + repr(ident_a) + str(mine.stats())
    assert "authenticated peer" in caplog.text  # the logs do say what happened
    for secret in secrets_:
        for form in (secret.hex(), base64.b64encode(secret).decode(), repr(secret)):
            assert form not in text


async def test_sealed_tcp_channels_agree_to_skip_the_crc(plugins, nodes) -> None:
    """Both sides take unchecked frames; through a wrapper without the hooks, nobody does."""
    sessions: asyncio.Queue[Any] = asyncio.Queue()

    async def serve(raw: Channel) -> None:
        sealed = await secure_channel(plugins, raw, "responder", provider(nodes, "b"))
        sessions.put_nowait(sealed.session)
        await sealed.send(await sealed.recv())
        await sealed.drain()

    async with connected(plugins.transports.get("tcp")(), serve) as raw:
        sealed = await secure_channel(plugins, raw, "initiator", provider(nodes, "a"))
        frame = os.urandom(300_000)
        await sealed.send(frame)
        assert await sealed.recv() == frame
        assert sealed.session.peer_accepts_unchecked_frames
        assert (await asyncio.wait_for(sessions.get(), 20)).peer_accepts_unchecked_frames


async def unchecked_pair(
    sender_settings: dict[str, Any], *, accept: bool
) -> tuple[list[bytes], BaseException | None]:
    """Frames the receiver got from a sender switched to unchecked frames, and its error."""
    got: list[bytes] = []
    error: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    async def serve(raw: Channel) -> None:
        if accept:
            assert raw.ex_accept_unchecked() is True  # type: ignore[attr-defined]
        try:
            for _ in range(3):
                got.append(await raw.recv())
            error.set_result(None)
        except Exception as exc:
            error.set_result(exc)

    tcp = TcpTransport(sender_settings)
    async with connected(tcp, serve, listening=TcpTransport()) as channel:
        channel.ex_send_unchecked()  # type: ignore[attr-defined]
        for size in (10, 70_000, 1 << 20):
            await channel.send(bytes([size % 251]) * size)
        failure = await asyncio.wait_for(error, 20)
    return got, failure


async def test_unchecked_frames_reach_a_channel_that_accepts_them() -> None:
    got, failure = await unchecked_pair({}, accept=True)
    assert failure is None
    assert got == [bytes([size % 251]) * size for size in (10, 70_000, 1 << 20)]


async def test_unchecked_frames_are_refused_by_a_channel_that_never_accepted() -> None:
    got, failure = await unchecked_pair({}, accept=False)
    assert got == []
    assert isinstance(failure, FrameError)
    assert "without a CRC" in str(failure)


async def test_skip_crc_when_sealed_false_keeps_the_crc() -> None:
    got, failure = await unchecked_pair({"skip_crc_when_sealed": False}, accept=False)
    assert failure is None
    assert len(got) == 3


def test_skip_crc_when_sealed_must_be_a_boolean() -> None:
    with pytest.raises(TransportError, match="skip_crc_when_sealed"):
        TcpTransport({"skip_crc_when_sealed": "no"})
