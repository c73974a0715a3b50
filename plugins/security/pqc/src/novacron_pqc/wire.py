"""Handshake message encoding: magic, type byte, then length-prefixed fields."""

from __future__ import annotations

import struct
from enum import IntEnum

from novacron_sdk.errors import SecurityError

MAGIC = b"NCQ1"
MAX_HANDSHAKE_FRAME = 32 * 1024
_LENGTH = struct.Struct(">I")


class HandshakeRefusedError(SecurityError):
    """The peer refused the handshake; ``reason`` is what it said, in its own words."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"the peer refused the handshake: {reason}")


class HandshakeMsg(IntEnum):
    """Handshake message types, in the order they are sent."""

    HELLO = 1  # initiator -> responder: identity, KEM offer, settings
    REPLY = 2  # responder -> initiator: identity, KEM reply, settings, signature
    FINISH = 3  # initiator -> responder: signature, key confirmation
    DONE = 4  # responder -> initiator: key confirmation
    ERROR = 15  # either way: why the handshake was refused (UTF-8 text)


def pack(kind: HandshakeMsg, *fields: bytes) -> bytes:
    """One handshake frame."""
    parts = [MAGIC, bytes([kind])]
    for value in fields:
        parts += [_LENGTH.pack(len(value)), value]
    return b"".join(parts)


def unpack(frame: bytes, expected: HandshakeMsg, count: int) -> list[bytes]:
    """The ``count`` fields of a frame of type ``expected``; an ERROR frame raises its reason."""
    if len(frame) > MAX_HANDSHAKE_FRAME or frame[:4] != MAGIC or len(frame) < 5:
        msg = (
            "the peer did not answer with a NovaCron PQC handshake; is security enabled "
            "with the same provider on both sides?"
        )
        raise SecurityError(msg)
    kind = frame[4]
    fields: list[bytes] = []
    offset = 5
    while offset < len(frame):
        if offset + 4 > len(frame):
            break
        (length,) = _LENGTH.unpack_from(frame, offset)
        offset += 4
        fields.append(bytes(frame[offset : offset + length]))
        offset += length
    if offset != len(frame):
        msg = "handshake frame is truncated or malformed"
        raise SecurityError(msg)
    if kind == HandshakeMsg.ERROR:
        reason = fields[0].decode("utf-8", "replace") if fields else "no reason given"
        raise HandshakeRefusedError(reason)
    if kind != expected or len(fields) != count:
        msg = f"unexpected handshake message type {kind} with {len(fields)} fields"
        msg += f" (expected {expected.name} with {count})"
        raise SecurityError(msg)
    return fields
