"""Malformed, oversized, replayed and window-violating frames from a raw socket are rejected."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from novacron_dwcp.transport.multistream import MultiStreamTransport
from novacron_dwcp.transport.wire import (
    FLAG_RETRANSMIT,
    HEADER_SIZE,
    Hello,
    HelloKind,
    Kind,
    decode_header,
    encode_frame,
)
from novacron_sdk.errors import FrameError, TransportError
from novacron_sdk.transport.interface import Channel, Endpoint

SERVER = {"window_bytes": 65536, "max_frame_bytes": 65536, "window_frames": 64}
WAIT_S = 20
"""The bound of a wait for something that happens at once: only a hang reaches it."""


def raw_header(kind: int, seq: int, length: int, payload: bytes = b"", flags: int = 0) -> bytes:
    """A header with any length, valid CRC over ``payload`` (to fake sizes and kinds)."""
    prefix = struct.pack("!2sBBQI", b"NC", 1, kind | flags, seq, length)
    return prefix + zlib.crc32(payload, zlib.crc32(prefix)).to_bytes(4, "big")


class RawPeer:
    """A hand-driven DWCP client: handshake done, then arbitrary bytes."""

    def __init__(self, sock: socket.socket, server: Channel) -> None:
        self.sock = sock
        self.server = server

    def data(self, seq: int, payload: bytes, flags: int = 0) -> None:
        self.sock.sendall(encode_frame(Kind.DATA, seq, payload, flags))


@asynccontextmanager
async def raw_pair(settings: dict[str, Any]) -> AsyncIterator[RawPeer]:
    """A listener with ``settings`` and a raw client that completed the handshake."""
    transport = MultiStreamTransport(settings)
    accepted: asyncio.Queue[Channel] = asyncio.Queue()

    async def handler(channel: Channel) -> None:
        await accepted.put(channel)

    listener = await transport.listen(Endpoint(host="127.0.0.1"), handler)
    try:
        with socket.create_connection(("127.0.0.1", listener.endpoint.port)) as sock:
            sock.settimeout(WAIT_S)
            hello = Hello(HelloKind.NEW, os.urandom(16), 0, 1 << 20, 0, 1 << 20, 1024)
            sock.sendall(encode_frame(Kind.HELLO, 0, hello.encode()))
            loop = asyncio.get_running_loop()
            reply = await loop.run_in_executor(None, sock.recv, HEADER_SIZE)
            assert decode_header(reply, 4096).kind == Kind.WELCOME
            server = await asyncio.wait_for(accepted.get(), WAIT_S)
            try:
                yield RawPeer(sock, server)
            finally:
                sock.close()
                await server.close()
    finally:
        await listener.close()


@pytest.fixture
async def raw_peer() -> AsyncIterator[RawPeer]:
    async with raw_pair(SERVER) as peer:
        yield peer


async def _rejected(peer: RawPeer, match: str) -> None:
    with pytest.raises(FrameError, match=match):
        await asyncio.wait_for(peer.server.recv(), WAIT_S)
    with pytest.raises(TransportError):  # the channel stays failed
        await asyncio.wait_for(peer.server.recv(), WAIT_S)


async def test_valid_frames_arrive(raw_peer: RawPeer) -> None:
    raw_peer.data(0, b"hello")
    raw_peer.data(1, b"world")
    assert [await raw_peer.server.recv() for _ in range(2)] == [b"hello", b"world"]


async def test_corrupted_payload_is_rejected(raw_peer: RawPeer) -> None:
    frame = bytearray(encode_frame(Kind.DATA, 0, b"payload bytes"))
    frame[-1] ^= 0x40
    raw_peer.sock.sendall(frame)
    await _rejected(raw_peer, "CRC")


async def test_replayed_frame_is_rejected(raw_peer: RawPeer) -> None:
    raw_peer.data(0, b"once")
    raw_peer.data(0, b"once")
    assert await raw_peer.server.recv() == b"once"
    await _rejected(raw_peer, "replayed")


async def test_flagged_resend_of_a_received_frame_is_dropped_quietly(raw_peer: RawPeer) -> None:
    raw_peer.data(0, b"first")
    raw_peer.data(0, b"first", FLAG_RETRANSMIT)
    raw_peer.data(1, b"second")
    assert [await raw_peer.server.recv() for _ in range(2)] == [b"first", b"second"]


async def test_out_of_order_frames_are_reassembled(raw_peer: RawPeer) -> None:
    for seq in (2, 0, 3, 1):
        raw_peer.data(seq, f"frame {seq}".encode())
    assert [await raw_peer.server.recv() for _ in range(4)] == [
        f"frame {i}".encode() for i in range(4)
    ]


async def test_oversized_length_is_rejected_without_allocating(raw_peer: RawPeer) -> None:
    tracemalloc.start()
    try:
        raw_peer.sock.sendall(raw_header(Kind.DATA, 0, 1 << 30))
        raw_peer.sock.sendall(b"\0" * 4096)
        await _rejected(raw_peer, "over the limit|exceeds max_frame_bytes")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


async def test_bad_magic_is_rejected(raw_peer: RawPeer) -> None:
    raw_peer.sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await _rejected(raw_peer, "magic")


async def test_unknown_kind_is_rejected(raw_peer: RawPeer) -> None:
    raw_peer.sock.sendall(raw_header(0x0E, 0, 0))
    await _rejected(raw_peer, "unknown DWCP frame kind")


async def test_large_control_frame_is_rejected(raw_peer: RawPeer) -> None:
    raw_peer.sock.sendall(raw_header(Kind.ACK, 0, 60_000))
    await _rejected(raw_peer, "control frame")


async def test_frame_far_beyond_the_window_is_rejected(raw_peer: RawPeer) -> None:
    raw_peer.data(10_000, b"from the future")
    await _rejected(raw_peer, "beyond the receive window")


async def test_peer_ignoring_the_byte_window_is_cut_off(raw_peer: RawPeer) -> None:
    chunk = os.urandom(60_000)
    for seq in range(3):  # window 64 KiB + one max frame (64 KiB) < 3 x 60 KB
        raw_peer.data(seq, chunk)
    assert await raw_peer.server.recv() == chunk
    assert await raw_peer.server.recv() == chunk
    await _rejected(raw_peer, "over the receive bound")


async def test_truncated_frame_then_eof_is_a_lost_connection() -> None:
    """A stream ending mid-frame is a lost stream (its frames get resent), never a delivery."""
    async with raw_pair({**SERVER, "resume_window_s": 0}) as peer:
        frame = encode_frame(Kind.DATA, 0, b"x" * 1000)
        peer.sock.sendall(frame[:500])
        peer.sock.close()
        with pytest.raises(TransportError, match="connection lost"):
            await asyncio.wait_for(peer.server.recv(), WAIT_S)


async def test_corrupted_large_frame_is_rejected() -> None:
    """A frame big enough to be read straight into its own buffer is checked too."""
    async with raw_pair({"max_frame_bytes": 1 << 20}) as peer:
        frame = bytearray(encode_frame(Kind.DATA, 0, os.urandom(600_000)))
        frame[HEADER_SIZE + 500_000] ^= 0x01
        peer.sock.sendall(frame)
        await _rejected(peer, "CRC")


async def test_large_frames_arrive_intact() -> None:
    async with raw_pair({"max_frame_bytes": 1 << 20}) as peer:
        payloads = [os.urandom(n) for n in (300_000, 1 << 20, 5)]
        for seq, payload in enumerate(payloads):
            peer.data(seq, payload)
        assert [await peer.server.recv() for _ in payloads] == payloads


async def test_late_original_after_its_resend_is_not_a_replay(raw_peer: RawPeer) -> None:
    """A stalled stream's frame sent again elsewhere may arrive first; the original later."""
    raw_peer.data(0, b"rescued", FLAG_RETRANSMIT)
    raw_peer.data(1, b"next")
    raw_peer.data(0, b"rescued")  # the original, from the stream that was stuck
    raw_peer.data(2, b"after")
    assert [await raw_peer.server.recv() for _ in range(3)] == [b"rescued", b"next", b"after"]
