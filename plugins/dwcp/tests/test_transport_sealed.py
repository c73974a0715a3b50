"""DATA frames without payload CRC (FLAG_UNCHECKED) on sealed DWCP channels, on 127.0.0.1.

Such frames are taken only by a channel its security layer switched on; their header CRC is
still checked, resends keep the flag, and a sealed channel with the CRC skipped still
catches a tampered frame through the AEAD tag.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from novacron_dwcp.transport.channel import MultiStreamChannel
from novacron_dwcp.transport.multistream import MultiStreamTransport
from novacron_dwcp.transport.wire import (
    FLAG_RETRANSMIT,
    FLAG_UNCHECKED,
    HEADER_SIZE,
    Kind,
    decode_header,
    encode_header,
)
from novacron_sdk.errors import ConfigError, FrameError, SecurityError
from novacron_sdk.plugin.manager import build_plugin_manager
from novacron_sdk.security.channel import SecureChannel, secure_channel
from novacron_sdk.transport.interface import Channel, Endpoint

SIZES = (10, 70_000, 1 << 20)  # parsed in the scratch buffer, and read into a body buffer


def test_unchecked_header_is_refused_unless_accepted() -> None:
    header = encode_header(Kind.DATA, FLAG_UNCHECKED, 5, b"sealed bytes")
    with pytest.raises(FrameError, match="without a payload CRC"):
        decode_header(header, 1 << 20)
    parsed = decode_header(header, 1 << 20, accept_unchecked=True)
    assert parsed.unchecked
    assert (parsed.seq, parsed.length) == (5, len(b"sealed bytes"))
    parsed.check_payload(b"any bytes: the security layer checks them")


def test_unchecked_header_is_still_checked() -> None:
    header = bytearray(encode_header(Kind.DATA, FLAG_UNCHECKED, 5, b"payload"))
    header[11] ^= 1  # a bit of the sequence number
    with pytest.raises(FrameError, match="header CRC32"):
        decode_header(header, 1 << 20, accept_unchecked=True)


def test_control_frames_keep_their_crc() -> None:
    header = encode_header(Kind.ACK, FLAG_UNCHECKED, 0, b"")
    with pytest.raises(FrameError, match="only DATA frames"):
        decode_header(header, 1 << 20, accept_unchecked=True)


def test_checked_frames_are_unchanged() -> None:
    payload = b"plain"
    parsed = decode_header(encode_header(Kind.DATA, 0, 1, payload), 1 << 20)
    assert not parsed.unchecked
    parsed.check_payload(payload)
    with pytest.raises(FrameError, match="CRC32"):
        parsed.check_payload(b"plaiN")


def test_skip_crc_when_sealed_is_a_boolean_setting() -> None:
    assert MultiStreamTransport().config.skip_crc_when_sealed is True
    with pytest.raises(ConfigError, match="skip_crc_when_sealed"):
        MultiStreamTransport({"skip_crc_when_sealed": "sometimes"})


@asynccontextmanager
async def dwcp_pair(
    sender_settings: dict[str, Any], *, accept: bool, count: int
) -> AsyncIterator[tuple[MultiStreamChannel, asyncio.Future[tuple[list[bytes], Any]]]]:
    """A client channel; the future gives what the server received and its error."""
    loop = asyncio.get_running_loop()
    result: asyncio.Future[tuple[list[bytes], Any]] = loop.create_future()

    async def serve(raw: Channel) -> None:
        assert isinstance(raw, MultiStreamChannel)
        if accept:
            assert raw.ex_accept_unchecked() is True
        got: list[bytes] = []
        try:
            for _ in range(count):
                got.append(await raw.recv())
            result.set_result((got, raw.unchecked_received))
        except Exception as exc:
            result.set_result((got, exc))

    listener = await MultiStreamTransport().listen(Endpoint(host="127.0.0.1"), serve)
    channel = await MultiStreamTransport(sender_settings).connect(listener.endpoint)
    assert isinstance(channel, MultiStreamChannel)
    try:
        yield channel, result
    finally:
        await channel.close()
        await listener.close()


def frames() -> list[bytes]:
    return [bytes([size % 251]) * size for size in SIZES]


async def test_unchecked_frames_reach_a_channel_that_accepts_them() -> None:
    async with dwcp_pair({}, accept=True, count=len(SIZES)) as (channel, result):
        channel.ex_send_unchecked()
        for frame in frames():
            await channel.send(frame)
        got, unchecked = await asyncio.wait_for(result, 10)
    assert got == frames()
    assert unchecked == len(SIZES)


async def test_unchecked_frames_are_refused_by_a_channel_that_never_accepted() -> None:
    async with dwcp_pair({}, accept=False, count=len(SIZES)) as (channel, result):
        channel.ex_send_unchecked()
        for frame in frames():
            await channel.send(frame)
        got, failure = await asyncio.wait_for(result, 10)
    assert got == []
    assert isinstance(failure, FrameError)
    assert "without a payload CRC" in str(failure)


async def test_skip_crc_when_sealed_false_keeps_the_crc() -> None:
    settings = {"skip_crc_when_sealed": False}
    async with dwcp_pair(settings, accept=False, count=len(SIZES)) as (channel, result):
        channel.ex_send_unchecked()
        for frame in frames():
            await channel.send(frame)
        got, unchecked = await asyncio.wait_for(result, 10)
    assert got == frames()
    assert unchecked == 0


async def test_resent_frames_keep_the_flag_and_arrive_once_in_order() -> None:
    payloads = [os.urandom(300_000) for _ in range(24)]
    settings = {"mode": "datacenter", "initial_streams": 3, "adapt": False}
    async with dwcp_pair(settings, accept=True, count=len(payloads)) as (channel, result):
        channel.ex_send_unchecked()
        for payload in payloads:
            await channel.send(payload)
        # Nothing was acknowledged yet (no await let the peer run): every frame is resent
        # after the resume, flagged as a resend and still unchecked.
        channel.ex_kill_all_streams()
        got, unchecked = await asyncio.wait_for(result, 20)
        assert channel.resends > 0
    assert got == payloads
    assert unchecked >= len(payloads)


def test_resend_header_keeps_unchecked_and_adds_retransmit() -> None:
    header = encode_header(Kind.DATA, FLAG_UNCHECKED | FLAG_RETRANSMIT, 9, b"x" * 100)
    parsed = decode_header(header[:HEADER_SIZE], 1 << 20, accept_unchecked=True)
    assert parsed.unchecked
    assert parsed.retransmit


# -- sealed through the pqc provider (skipped without the novacron-pqc plugin) -------------


@pytest.fixture
def providers(tmp_path: Path) -> tuple[Any, Any]:
    identity = pytest.importorskip("novacron_pqc.identity")
    provider = pytest.importorskip("novacron_pqc.provider")
    a, b = identity.NodeIdentity.generate("a"), identity.NodeIdentity.generate("b")
    ea, eb = identity.EnrolledKeys(tmp_path / "a"), identity.EnrolledKeys(tmp_path / "b")
    ea.enroll(b.public)
    eb.enroll(a.public)
    return (
        provider.PqcSecurityProvider({"identity": a, "enrolled": ea}),
        provider.PqcSecurityProvider({"identity": b, "enrolled": eb}),
    )


@asynccontextmanager
async def sealed_pair(
    providers: tuple[Any, Any], settings: dict[str, Any]
) -> AsyncIterator[tuple[SecureChannel, asyncio.Queue[Any], list[MultiStreamChannel]]]:
    """A sealed client channel, the frames (or errors) the server gets, the server's raw one."""
    plugins = build_plugin_manager(autoload=False)
    received: asyncio.Queue[Any] = asyncio.Queue()
    server_raw: list[MultiStreamChannel] = []

    async def serve(raw: Channel) -> None:
        assert isinstance(raw, MultiStreamChannel)
        server_raw.append(raw)
        sealed = await secure_channel(plugins, raw, "responder", providers[1])
        while True:
            try:
                frame = await sealed.recv()
            except SecurityError as exc:
                received.put_nowait(exc)
                return
            received.put_nowait(frame)
            await sealed.send(frame)

    transport = MultiStreamTransport(settings)
    listener = await transport.listen(Endpoint(host="127.0.0.1"), serve)
    raw = await transport.connect(listener.endpoint)
    try:
        sealed = await secure_channel(plugins, raw, "initiator", providers[0])
        yield sealed, received, server_raw
    finally:
        await raw.close()
        await listener.close()


async def test_sealed_round_trip_skips_the_payload_crc(providers: tuple[Any, Any]) -> None:
    async with sealed_pair(providers, {}) as (sealed, received, server_raw):
        assert sealed.session.peer_accepts_unchecked_frames
        for size in (0, *SIZES):
            frame = os.urandom(size)
            await sealed.send(frame)
            assert await received.get() == frame
            assert await sealed.recv() == frame
        inner = sealed.inner
        assert isinstance(inner, MultiStreamChannel)
        # Handshake messages are not sealed and kept their CRC; every sealed frame skipped it.
        assert inner.unchecked_received == len(SIZES) + 1
        assert server_raw[0].unchecked_received == len(SIZES) + 1


async def test_sealed_round_trip_with_the_crc_kept(providers: tuple[Any, Any]) -> None:
    async with sealed_pair(providers, {"skip_crc_when_sealed": False}) as (sealed, received, srv):
        frame = os.urandom(70_000)
        await sealed.send(frame)
        assert await received.get() == frame
        assert await sealed.recv() == frame
        # Both ends were told the peer takes unchecked frames, and both keep the CRC.
        assert sealed.session.peer_accepts_unchecked_frames
        assert srv[0].unchecked_received == 0
        inner = sealed.inner
        assert isinstance(inner, MultiStreamChannel)
        assert inner.unchecked_received == 0


async def test_tampered_unchecked_frame_is_caught_by_the_aead(providers: tuple[Any, Any]) -> None:
    async with sealed_pair(providers, {}) as (sealed, received, server_raw):
        tampered = bytearray(sealed.session.seal(os.urandom(200_000)))
        tampered[100_000] ^= 1
        await sealed.inner.send(bytes(tampered))  # unchecked: no CRC sees the change
        error = await asyncio.wait_for(received.get(), 10)
        assert isinstance(error, SecurityError)
        assert "altered in transit" in str(error)
        assert server_raw[0].unchecked_received == 1
