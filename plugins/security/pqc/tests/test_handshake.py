"""The handshake itself over the in-memory channel pair the HTTP layer uses: settings, tampering."""

from __future__ import annotations

import asyncio

import pytest

from novacron_pqc.http_auth import FrameQueueChannel
from novacron_pqc.wire import HandshakeMsg, HandshakeRefusedError
from novacron_sdk.errors import SecurityError


async def run(initiator, responder, *, tamper=None):
    """Both sides concurrently; ``tamper(kind, frame)`` may alter frames in flight."""
    left, relay_left = FrameQueueChannel.pair()
    relay_right, right = FrameQueueChannel.pair()

    async def relay(src: FrameQueueChannel, dst: FrameQueueChannel) -> None:
        while True:
            frame = await src.recv()
            await dst.send(tamper(frame[4], frame) if tamper else frame)

    relays = [
        asyncio.create_task(relay(relay_left, relay_right)),
        asyncio.create_task(relay(relay_right, relay_left)),
    ]
    try:
        return await asyncio.gather(
            initiator.handshake(left, role="initiator"),
            responder.handshake(right, role="responder"),
            return_exceptions=True,
        )
    finally:
        for task in relays:
            task.cancel()


async def test_settings_are_agreed(pair) -> None:
    a, b = pair
    mine, theirs = await run(
        a.provider(aead="chacha20-poly1305", rotate_bytes=5000), b.provider(rotate_bytes=9000)
    )
    assert (mine.aead, theirs.aead) == ("chacha20-poly1305", "chacha20-poly1305")
    assert mine.rotate_bytes == theirs.rotate_bytes == 5000
    assert theirs.open(bytes(mine.seal(b"agreed"))) == b"agreed"
    assert (mine.peer_id, theirs.peer_id) == ("node-b", "node-a")


async def test_sessions_differ_per_handshake(pair) -> None:
    a, b = pair
    first, _ = await run(a.provider(), b.provider())
    _, second = await run(a.provider(), b.provider())
    with pytest.raises(SecurityError, match="sealed with another key"):
        second.open(bytes(first.seal(b"old session")))


@pytest.mark.parametrize(
    ("kind", "offset"),
    [
        (HandshakeMsg.HELLO, 200),  # the initiator's identity or KEM offer
        (HandshakeMsg.REPLY, 300),  # the responder's identity keys
        (HandshakeMsg.REPLY, 3500),  # inside the KEM reply or the signature
        (HandshakeMsg.FINISH, 100),  # the initiator's signature
    ],
)
async def test_tampered_handshake_fails_on_both_sides(pair, kind, offset) -> None:
    a, b = pair

    def flip(frame_kind: int, frame: bytes) -> bytes:
        if frame_kind != kind:
            return frame
        altered = bytearray(frame)
        altered[offset % len(frame)] ^= 0x01
        return bytes(altered)

    mine, theirs = await run(a.provider(), b.provider(), tamper=flip)
    assert isinstance(mine, SecurityError), mine
    assert isinstance(theirs, SecurityError), theirs


async def test_silent_peer_times_out_with_advice(pair) -> None:
    a, _ = pair
    left, _right = FrameQueueChannel.pair()
    with pytest.raises(SecurityError, match=r"timed out.*security enabled"):
        await a.provider(handshake_timeout_s=0.2).handshake(left, role="initiator")


async def test_the_refused_side_learns_where_to_enrol(pair, stranger) -> None:
    _, b = pair
    mine, theirs = await run(stranger.provider(), b.provider())
    assert isinstance(theirs, SecurityError)
    assert "'stranger'" in str(theirs)
    assert "not enrolled here" in str(theirs)  # in node-b's own log: "here" is node-b
    assert isinstance(mine, HandshakeRefusedError), mine
    assert "is not enrolled on 'node-b'" in mine.reason  # the stranger's "here" is not node-b
    assert mine.reason.endswith("run on node-b: novacron keys enroll stranger.pub")
    assert str(mine) == f"the peer refused the handshake: {mine.reason}"
