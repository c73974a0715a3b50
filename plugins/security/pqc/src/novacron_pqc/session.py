"""Sealed frames: AEAD with nonces from sequence numbers, strict order, and key rotation.

Wire form of a sealed frame: ``version (1) | epoch (4) | sequence (8) | ciphertext | tag (16)``.
The 13-byte header is the associated data and ``epoch || sequence`` is the 96-bit nonce, so a
nonce never repeats under one key. Each direction has its own secret. The sender ratchets to
the next epoch key when its byte or time budget is spent; the receiver follows the epoch the
header names (one step at a time) and refuses a sender that keeps using a key beyond the byte
budget both sides agreed on in the handshake. Secrets of past epochs are dropped, so a key
stolen later does not open frames sealed before the last rotation.
"""

from __future__ import annotations

import struct
import time
from typing import Literal, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from novacron_sdk.errors import SecurityError
from novacron_sdk.security.interface import SecureSession

FRAME_VERSION = 1
HEADER = struct.Struct(">BIQ")
HEADER_BYTES = HEADER.size
TAG_BYTES = 16
AeadName = Literal["aes-256-gcm", "chacha20-poly1305"]
AEADS: dict[str, type[AESGCM] | type[ChaCha20Poly1305]] = {
    "aes-256-gcm": AESGCM,
    "chacha20-poly1305": ChaCha20Poly1305,
}


def expand(secret: bytes, label: bytes, length: int) -> bytes:
    """HKDF-Expand-SHA-384 of ``secret`` with a NovaCron label."""
    info = b"novacron-pqc/v1 " + label
    return HKDFExpand(algorithm=hashes.SHA384(), length=length, info=info).derive(secret)


class _Direction:
    """The key schedule of one direction: current epoch, its AEAD and what it has carried."""

    def __init__(self, aead: str, secret: bytes) -> None:
        self._cls = AEADS[aead]
        self.epoch = 0
        self.next_seq = 0
        self.bytes_in_epoch = 0
        self.epoch_started = time.monotonic()
        self._secret = secret
        self.cipher = self._cls(expand(secret, b"key", 32))

    def next_cipher(self) -> AESGCM | ChaCha20Poly1305:
        """The AEAD of epoch + 1 (state unchanged until :meth:`advance`)."""
        return self._cls(expand(expand(self._secret, b"next", 48), b"key", 32))

    def advance(self, cipher: AESGCM | ChaCha20Poly1305) -> None:
        """Move to the next epoch, forgetting the current secret."""
        self._secret = expand(self._secret, b"next", 48)
        self.cipher = cipher
        self.epoch += 1
        self.bytes_in_epoch = 0
        self.epoch_started = time.monotonic()


class AeadSession(SecureSession):
    """Per-direction keys of one channel; seals and opens frames in strict order."""

    def __init__(
        self,
        *,
        peer_id: str,
        peer_fingerprint: str,
        aead: str,
        send_secret: bytes,
        recv_secret: bytes,
        exporter_secret: bytes,
        rotate_bytes: int,
        rotate_seconds: float,
    ) -> None:
        if aead not in AEADS:
            msg = f"unknown AEAD {aead!r}; use one of {', '.join(AEADS)}"
            raise SecurityError(msg)
        self.peer_id = peer_id
        self.peer_fingerprint = peer_fingerprint
        self.aead = aead
        self.rotate_bytes = rotate_bytes
        self.rotate_seconds = rotate_seconds
        self._send = _Direction(aead, send_secret)
        self._recv = _Direction(aead, recv_secret)
        self._exporter = exporter_secret

    def __repr__(self) -> str:
        return f"AeadSession(peer_id={self.peer_id!r}, aead={self.aead!r})"

    @property
    def send_epoch(self) -> int:
        """Key epoch used for the next sealed frame (rotations so far)."""
        return self._send.epoch

    @property
    def recv_epoch(self) -> int:
        """Key epoch of the last opened frame."""
        return self._recv.epoch

    def export(self, label: str, length: int = 32) -> bytes:
        """A secret bound to this session for another use (e.g. HTTP request MACs)."""
        return expand(self._exporter, b"export " + label.encode(), length)

    def _rotation_due(self) -> bool:
        send = self._send
        if send.bytes_in_epoch >= self.rotate_bytes:
            return True
        return (
            self.rotate_seconds > 0 and time.monotonic() - send.epoch_started >= self.rotate_seconds
        )

    def seal(self, frame: bytes) -> bytes:
        """Encrypt and authenticate ``frame``; rotates the key first when a budget is spent."""
        send = self._send
        if send.next_seq and self._rotation_due():
            send.advance(send.next_cipher())
        header = HEADER.pack(FRAME_VERSION, send.epoch, send.next_seq)
        out = bytearray(HEADER_BYTES + len(frame) + TAG_BYTES)
        out[:HEADER_BYTES] = header
        # encrypt_into writes ciphertext and tag after the header: one buffer, no join copy.
        send.cipher.encrypt_into(header[1:], frame, header, memoryview(out)[HEADER_BYTES:])
        send.next_seq += 1
        send.bytes_in_epoch += len(frame)
        # Channels take bytes-like frames; handing over the bytearray saves a full copy and
        # nothing here keeps or reuses it.
        return cast("bytes", out)

    def open(self, sealed: bytes) -> bytes:
        """Check and decrypt ``sealed``; SecurityError on tampering, replay, reordering."""
        recv = self._recv
        if len(sealed) < HEADER_BYTES + TAG_BYTES:
            msg = f"sealed frame of {len(sealed)} bytes is too short; the peer is not sealing"
            raise SecurityError(msg)
        version, epoch, seq = HEADER.unpack_from(sealed)
        if version != FRAME_VERSION:
            msg = f"sealed frame version {version} is not supported (expected {FRAME_VERSION})"
            raise SecurityError(msg)
        if seq < recv.next_seq:
            msg = (
                f"replayed frame rejected: sequence {seq} was already received "
                f"(expected {recv.next_seq}) from {self.peer_id}"
            )
            raise SecurityError(msg)
        if seq > recv.next_seq:
            msg = (
                f"frame out of order rejected: sequence {seq} arrived, expected {recv.next_seq} "
                f"from {self.peer_id}; frames were dropped or reordered"
            )
            raise SecurityError(msg)
        if epoch == recv.epoch:
            if recv.bytes_in_epoch >= self.rotate_bytes:
                msg = (
                    f"{self.peer_id} kept key epoch {epoch} beyond the agreed budget of "
                    f"{self.rotate_bytes} bytes; frame rejected"
                )
                raise SecurityError(msg)
            cipher = recv.cipher
        elif epoch == recv.epoch + 1:
            cipher = recv.next_cipher()
        else:
            msg = (
                f"frame from key epoch {epoch} rejected; expected {recv.epoch} or "
                f"{recv.epoch + 1} from {self.peer_id}"
            )
            raise SecurityError(msg)
        view = memoryview(sealed)
        try:
            frame = cipher.decrypt(view[1:HEADER_BYTES], view[HEADER_BYTES:], view[:HEADER_BYTES])
        except InvalidTag:
            msg = (
                f"frame {seq} from {self.peer_id} failed authentication: it was altered in "
                "transit or sealed with another key"
            )
            raise SecurityError(msg) from None
        if epoch != recv.epoch:
            recv.advance(cipher)
        recv.next_seq += 1
        recv.bytes_in_epoch += len(frame)
        return frame
