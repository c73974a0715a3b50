"""The migration protocol: typed messages carried as transport frames.

Each frame starts with one type byte. Control messages carry a JSON object; page payloads and
device state carry bytes. A frame of an unknown type, bad JSON or an unexpected type for the
current step raises :class:`~novacron_sdk.errors.MigrationError` naming what was expected.
"""

from __future__ import annotations

import json
from enum import IntEnum
from typing import Any

from novacron_sdk.errors import MigrationError
from novacron_sdk.transport.interface import Channel

PROTOCOL_VERSION = 2
"""2: the destination resumes the VM on a VERIFY whose check passes (version 1 waited for a
COMMIT, one more round trip of downtime); PING/PONG measure the round trip at the handshake."""
MAX_CONTROL_BYTES = 16 * 1024 * 1024


class Msg(IntEnum):
    """Frame types, in the order a migration uses them."""

    HELLO = 1  # src -> dst: migration id, token, source info, codec
    READY = 2  # dst -> src: sink prepared
    PAGES = 3  # src -> dst: one codec payload
    ROUND_END = 4  # src -> dst: end of a pre-copy round
    ROUND_ACK = 5  # dst -> src: every page of the round is written
    DEVICE = 6  # src -> dst: device state (raw bytes)
    VERIFY = 7  # src -> dst: digest of the digest table; resume the VM if everything matches
    VERIFIED = 8  # dst -> src: verification result
    TABLE = 9  # dst -> src: the full digest table, sent after a mismatch
    # 10 was COMMIT in protocol version 1 (resume after a separate round trip); not reused.
    ACTIVATED = 11  # dst -> src: the VM runs at the destination
    ABORT = 12  # either way: give up; the destination discards everything
    ERROR = 13  # dst -> src: the destination failed (message in JSON)
    PING = 14  # src -> dst, after READY: measures the round trip (JSON body echoed)
    PONG = 15  # dst -> src: the PING's body


def pack_json(kind: Msg, body: dict[str, Any]) -> bytes:
    """A control frame."""
    return bytes([kind]) + json.dumps(body, separators=(",", ":")).encode()


def pack_bytes(kind: Msg, body: bytes) -> bytes:
    """A binary frame (page payload, device state, digest table)."""
    return bytes([kind]) + body


def split(frame: bytes) -> tuple[Msg, memoryview]:
    """Type and body of a frame."""
    if not frame:
        msg = "empty migration frame"
        raise MigrationError(msg)
    try:
        kind = Msg(frame[0])
    except ValueError:
        msg = f"unknown migration frame type {frame[0]}"
        raise MigrationError(msg) from None
    return kind, memoryview(frame)[1:]


def parse_json(kind: Msg, body: memoryview) -> dict[str, Any]:
    """The JSON object of a control frame."""
    if len(body) > MAX_CONTROL_BYTES:
        msg = f"{kind.name} control frame of {len(body)} bytes exceeds {MAX_CONTROL_BYTES}"
        raise MigrationError(msg)
    try:
        value = json.loads(bytes(body))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = f"{kind.name} frame does not hold valid JSON: {exc}"
        raise MigrationError(msg) from exc
    if not isinstance(value, dict):
        msg = f"{kind.name} frame must hold a JSON object, got {type(value).__name__}"
        raise MigrationError(msg)
    return value


async def expect(channel: Channel, *kinds: Msg) -> tuple[Msg, memoryview]:
    """Receive one frame and check its type; an ERROR or ABORT from the peer raises."""
    kind, body = split(await channel.recv())
    if kind in kinds:
        return kind, body
    if kind in (Msg.ERROR, Msg.ABORT):
        detail = parse_json(kind, body).get("reason", "no reason given")
        msg = f"peer sent {kind.name}: {detail}"
        raise MigrationError(msg)
    wanted = " or ".join(k.name for k in kinds)
    msg = f"protocol error: expected {wanted}, got {kind.name}"
    raise MigrationError(msg)


async def expect_json(channel: Channel, kind: Msg) -> dict[str, Any]:
    """Receive a control frame of ``kind`` and return its JSON object."""
    _, body = await expect(channel, kind)
    return parse_json(kind, body)
