"""Sealed frames: AEAD with nonces from sequence numbers, strict order, and key rotation.

Wire form of a sealed frame: ``version (1) | epoch (4) | sequence (8) | ciphertext | tag (16)``.
The 13-byte header is the associated data and ``epoch || sequence`` is the 96-bit nonce, so a
nonce never repeats under one key. Each direction has its own secret. The sender ratchets to
the next epoch key when its byte or time budget is spent; the receiver follows the epoch the
header names (one step at a time) and refuses a sender that keeps using a key beyond the byte
budget both sides agreed on in the handshake. Secrets of past epochs are dropped, so a key
stolen later does not open frames sealed before the last rotation.

Large frames are sealed into a few recycled buffers, and :meth:`AeadSession.open_into` opens
into the caller's reusable buffer: allocating and freeing fresh frame-sized blocks per frame
makes glibc give the memory back to the kernel and fault it in again every time, which costs
more than the encryption itself.
"""

from __future__ import annotations

import struct
import sys
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
OVERHEAD_BYTES = HEADER_BYTES + TAG_BYTES
# Frames in this size range are sealed into recycled buffers (smaller ones are cheap to
# allocate; larger ones are rare and not worth keeping). A sender keeps up to
# _SEAL_POOL_BYTES of them: enough for the frames a transport still holds, which for DWCP
# is its whole resend window (every frame stays referenced until the peer acknowledges it).
_RECYCLE_MIN_BYTES = 64 * 1024
_RECYCLE_MAX_BYTES = 8 * 1024 * 1024
_SEAL_POOL_BYTES = 16 * 1024 * 1024


def _refcount_when_unshared() -> int:
    """What ``sys.getrefcount(pool[i])`` gives for a buffer only the pool refers to.

    Measured rather than assumed (2 on CPython 3.11), with the very expression the pool
    uses, so an interpreter that counts the call's argument differently cannot fool it.
    """
    pool = [bytearray()]
    return sys.getrefcount(pool[0])


_UNSHARED = _refcount_when_unshared()


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
        peer_accepts_unchecked_frames: bool = False,
    ) -> None:
        if aead not in AEADS:
            msg = f"unknown AEAD {aead!r}; use one of {', '.join(AEADS)}"
            raise SecurityError(msg)
        self.peer_id = peer_id
        self.peer_fingerprint = peer_fingerprint
        self.aead = aead
        self.rotate_bytes = rotate_bytes
        self.rotate_seconds = rotate_seconds
        self.peer_accepts_unchecked_frames = peer_accepts_unchecked_frames
        self._send = _Direction(aead, send_secret)
        self._recv = _Direction(aead, recv_secret)
        self._exporter = exporter_secret
        self._seal_pool: list[bytearray] = []

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

    def _sealed_buffer(self, size: int) -> bytearray:
        """A buffer of ``size`` bytes for a sealed frame: a recycled one that nobody holds."""
        if not _RECYCLE_MIN_BYTES <= size <= _RECYCLE_MAX_BYTES:
            return bytearray(size)
        pool = self._seal_pool
        for index in range(len(pool)):
            # Only the pool refers to it: no transport write queue, retransmit queue or
            # caller still holds the frame sealed here last, nor a view of it (a view
            # holds a reference), so overwriting it cannot change bytes anyone can read.
            if sys.getrefcount(pool[index]) == _UNSHARED:
                if len(pool[index]) != size:
                    pool[index] = bytearray(size)
                return pool[index]
        buffer = bytearray(size)
        if sum(map(len, pool)) + size <= _SEAL_POOL_BYTES:
            pool.append(buffer)
        return buffer

    def seal(self, frame: bytes) -> bytes:
        """Encrypt and authenticate ``frame``; rotates the key first when a budget is spent.

        Large frames come back in recycled buffers: a buffer is reused only once nothing
        references it any more, so keeping or queueing a sealed frame is always safe.
        """
        send = self._send
        if send.next_seq and self._rotation_due():
            send.advance(send.next_cipher())
        out = self._sealed_buffer(len(frame) + OVERHEAD_BYTES)
        HEADER.pack_into(out, 0, FRAME_VERSION, send.epoch, send.next_seq)
        view = memoryview(out)
        # encrypt_into writes ciphertext and tag after the header: one buffer, no join copy.
        with view:
            send.cipher.encrypt_into(
                view[1:HEADER_BYTES], frame, view[:HEADER_BYTES], view[HEADER_BYTES:]
            )
        send.next_seq += 1
        send.bytes_in_epoch += len(frame)
        # Channels take bytes-like frames; handing over the bytearray saves a full copy.
        return cast("bytes", out)

    def open(self, sealed: bytes) -> bytes:
        """Check and decrypt ``sealed``; SecurityError on tampering, replay, reordering."""
        with memoryview(sealed) as view:
            return self._open(view, None)

    def open_into(self, sealed: bytes, scratch: bytearray) -> memoryview:
        """Like :meth:`open`, but decrypt into ``scratch`` (grown as needed); a view of it.

        The caller releases the view before the next call and copies what it keeps.
        """
        size = len(sealed) - OVERHEAD_BYTES
        if len(scratch) < size:
            scratch.extend(bytes(size - len(scratch)))
        out = memoryview(scratch)[: max(size, 0)]
        try:
            with memoryview(sealed) as view:
                self._open(view, out)
        except BaseException:
            out.release()  # a view left alive would stop scratch from ever being resized
            raise
        return out

    def _open(self, view: memoryview, out: memoryview | None) -> bytes:
        recv = self._recv
        if len(view) < OVERHEAD_BYTES:
            msg = f"sealed frame of {len(view)} bytes is too short; the peer is not sealing"
            raise SecurityError(msg)
        version, epoch, seq = HEADER.unpack_from(view)
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
        nonce, aad, body = view[1:HEADER_BYTES], view[:HEADER_BYTES], view[HEADER_BYTES:]
        frame = b""
        try:
            if out is None:
                frame = cipher.decrypt(nonce, body, aad)
            else:
                cipher.decrypt_into(nonce, body, aad, out)
        except InvalidTag:
            msg = (
                f"frame {seq} from {self.peer_id} failed authentication: it was altered in "
                "transit or sealed with another key"
            )
            raise SecurityError(msg) from None
        if epoch != recv.epoch:
            recv.advance(cipher)
        recv.next_seq += 1
        recv.bytes_in_epoch += len(view) - OVERHEAD_BYTES
        return frame
