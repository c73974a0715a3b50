"""DWCP multi-stream wire format: frame kinds on the shared frame header, handshake bodies.

Every message on every TCP stream is a frame with the 20-byte header of
:mod:`novacron_sdk.transport.framing` (magic, version, flags, seq, length, CRC32 over the
header fields and the payload). DWCP uses the transport-defined ``flags`` byte: the low four
bits carry the frame kind, bit 7 marks a retransmission, bit 6 a DATA frame whose CRC covers
the header only (its payload is sealed by a security layer, whose AEAD tag checks it).
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
_PREFIX = struct.Struct("!2sBBQI")

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
FLAG_UNCHECKED = 0x40
"""DATA only: the CRC covers the 16 header bytes, not the payload, which a security layer
seals (its AEAD tag detects any change). Accepted only on channels switched to it."""
_KIND_MASK = 0x0F
_KNOWN_FLAGS = FLAG_RETRANSMIT | FLAG_UNCHECKED | _KIND_MASK


def encode_header(kind: int, flags: int, seq: int, payload: bytes | memoryview) -> bytes:
    """Return the shared 20-byte header of a DWCP frame carrying ``payload``."""
    if flags & FLAG_UNCHECKED:
        return _unchecked_header(kind | flags, seq, len(payload))
    return framing.pack_header(seq, payload, flags=kind | flags)


def _unchecked_header(flags: int, seq: int, length: int) -> bytes:
    if not 0 <= seq <= framing.MAX_SEQ or length > framing.MAX_LENGTH:
        msg = f"frame seq {seq} of {length} bytes does not fit the header; open a new channel"
        raise FrameError(msg)
    prefix = _PREFIX.pack(framing.MAGIC, framing.VERSION, flags, seq, length)
    return prefix + zlib.crc32(prefix).to_bytes(4, "big")


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

    @property
    def unchecked(self) -> bool:
        """The CRC covered the header only (checked in decode_header); the payload is sealed."""
        return bool(self.flags & FLAG_UNCHECKED)

    def check_payload(self, payload: bytes | bytearray | memoryview) -> None:
        """Raise FrameError unless the CRC covers this payload (unchecked frames: no-op)."""
        if not self.flags & FLAG_UNCHECKED:
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


def decode_header(
    raw: bytes | bytearray | memoryview, max_frame: int, *, accept_unchecked: bool = False
) -> Header:
    """Parse and validate a header; raise FrameError for anything malformed or oversized.

    Runs before any payload byte is read, so an absurd length never causes an allocation.
    A FLAG_UNCHECKED frame is refused unless ``accept_unchecked`` (the channel was switched
    to it by its security layer); its header CRC is checked here.
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
    prefix_crc = zlib.crc32(raw[:_CRC_OFFSET])
    if flags & FLAG_UNCHECKED:
        _check_unchecked(kind, parsed, prefix_crc, accept_unchecked)
    return Header(kind, flags & ~_KIND_MASK, parsed.length, parsed.seq, parsed.crc, prefix_crc)


def _check_unchecked(
    kind: int, parsed: framing.FrameHeader, prefix_crc: int, accept_unchecked: bool
) -> None:
    if not accept_unchecked:
        msg = (
            f"frame seq {parsed.seq} came without a payload CRC, which only sealed channels "
            "accept: the peer skips the CRC though this side never switched to sealed frames "
            "(or the header was corrupted); the channel was closed"
        )
        raise FrameError(msg)
    if kind != Kind.DATA:
        msg = f"control frame (kind {kind}) without a payload CRC: only DATA frames may skip it"
        raise FrameError(msg)
    if parsed.crc != prefix_crc:
        msg = (
            f"frame seq {parsed.seq} failed its header CRC32 check: the header was corrupted "
            "in transit; the channel was closed"
        )
        raise FrameError(msg)


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
