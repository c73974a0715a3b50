"""DWCP multi-stream wire format: frame kinds on the shared frame header, handshake bodies.

Every message on every TCP stream is a frame with the 20-byte header of
:mod:`novacron_sdk.transport.framing` (magic, version, flags, seq, length, CRC32 over the
header fields and the payload). DWCP uses the transport-defined ``flags`` byte: the low four
bits carry the frame kind, bit 7 marks a retransmission.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

from novacron_sdk.errors import FrameError
from novacron_sdk.transport import framing

HEADER_SIZE = framing.HEADER_SIZE
_CRC_OFFSET = HEADER_SIZE - 4

HELLO_BODY = struct.Struct("!B16sIQQII")
"""kind/status u8, session id 16 bytes, stream id u32, receive window u64,
next expected seq u64, max frame u32, window frames u32."""

MAX_CONTROL_PAYLOAD = 4096
"""Control frames (everything but DATA) never carry more than this."""


class Kind(IntEnum):
    """What a frame is."""

    DATA = 1
    ACK = 2
    HELLO = 3
    WELCOME = 4
    STREAM_CLOSE = 5
    CLOSE = 6
    REJECT = 7


class HelloKind(IntEnum):
    """Why a TCP stream is being opened."""

    NEW = 0
    JOIN = 1
    RESUME = 2


FLAG_RETRANSMIT = 0x80
"""The frame is a resend after a stream died: a duplicate of it is dropped, not an error."""
_KIND_MASK = 0x0F
_KNOWN_FLAGS = FLAG_RETRANSMIT | _KIND_MASK


def encode_header(kind: int, flags: int, seq: int, payload: bytes | memoryview) -> bytes:
    """Return the shared 20-byte header of a DWCP frame carrying ``payload``."""
    return framing.pack_header(seq, payload, flags=kind | flags)


def encode_frame(kind: int, seq: int, payload: bytes = b"", flags: int = 0) -> bytes:
    """Return a whole small frame (header and payload joined) for control messages."""
    return encode_header(kind, flags, seq, payload) + payload


@dataclass(frozen=True, slots=True)
class Header:
    """A parsed, sanity-checked frame header."""

    kind: int
    flags: int
    length: int
    seq: int
    crc: int
    prefix_crc: int

    @property
    def retransmit(self) -> bool:
        """The sender resent this frame after a stream died."""
        return bool(self.flags & FLAG_RETRANSMIT)

    def check_payload(self, payload: bytes | bytearray | memoryview) -> None:
        """Raise FrameError unless the CRC covers this payload."""
        self.check_crc(zlib.crc32(payload, self.prefix_crc))

    def check_crc(self, crc: int) -> None:
        """Raise FrameError unless ``crc`` (over prefix and payload) is the header's."""
        if crc != self.crc:
            msg = (
                f"frame seq {self.seq} (kind {self.kind}, {self.length} bytes) failed its "
                "CRC32 check: the data was corrupted in transit or the peer is not speaking "
                "DWCP; the channel was closed"
            )
            raise FrameError(msg)


def decode_header(raw: bytes | bytearray | memoryview, max_frame: int) -> Header:
    """Parse and validate a header; raise FrameError for anything malformed or oversized.

    Runs before any payload byte is read, so an absurd length never causes an allocation.
    """
    parsed = framing.parse_header(raw, max_frame_bytes=max_frame)
    flags = parsed.flags
    kind = flags & _KIND_MASK
    try:
        Kind(kind)
    except ValueError:
        msg = f"unknown DWCP frame kind {kind}: the peer speaks a newer or foreign protocol"
        raise FrameError(msg) from None
    if flags & ~_KNOWN_FLAGS:
        msg = f"unknown DWCP frame flags 0x{flags:02x} on frame seq {parsed.seq}"
        raise FrameError(msg)
    if kind != Kind.DATA and parsed.length > MAX_CONTROL_PAYLOAD:
        msg = (
            f"control frame (kind {kind}) announces {parsed.length} bytes, over the "
            f"{MAX_CONTROL_PAYLOAD}-byte limit for control frames"
        )
        raise FrameError(msg)
    return Header(
        kind,
        flags & ~_KIND_MASK,
        parsed.length,
        parsed.seq,
        parsed.crc,
        zlib.crc32(raw[:_CRC_OFFSET]),
    )


@dataclass(frozen=True, slots=True)
class Hello:
    """Body of HELLO (client to server) and WELCOME (server to client) frames."""

    kind: int
    session_id: bytes
    stream_id: int
    recv_window: int
    next_expected: int
    max_frame: int
    window_frames: int

    def encode(self) -> bytes:
        """The packed body."""
        return HELLO_BODY.pack(
            self.kind,
            self.session_id,
            self.stream_id,
            self.recv_window,
            self.next_expected,
            self.max_frame,
            self.window_frames,
        )

    @classmethod
    def decode(cls, body: bytes | bytearray) -> Hello:
        """Parse a body; raise FrameError when it has the wrong size."""
        if len(body) != HELLO_BODY.size:
            msg = f"handshake body is {len(body)} bytes, expected {HELLO_BODY.size}"
            raise FrameError(msg)
        return cls(*HELLO_BODY.unpack(body))
