"""Hybrid key encapsulation: X25519 + ML-KEM-768, combined through HKDF bound to the transcript.

The session secret stays safe while either part holds: an attacker must break X25519 *and*
ML-KEM-768 to learn it. Both shared secrets have fixed lengths, so their concatenation is
unambiguous; HKDF-SHA-384 extracts from it with a fixed label as salt and expands with the
transcript hash, which already covers every public key and ciphertext of the exchange.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from novacron_pqc import backends
from novacron_pqc.backends import KemBackendName
from novacron_sdk.errors import SecurityError

COMBINER_LABEL = b"novacron-pqc/v1 hybrid x25519+mlkem768"
X25519_PUBLIC_BYTES = 32
X25519_SECRET_BYTES = 32
MLKEM_PUBLIC_BYTES = 1184
MLKEM_CIPHERTEXT_BYTES = 1088
MLKEM_SECRET_BYTES = 32
SECRET_BYTES = 48
TRANSCRIPT_HASH_BYTES = 48


def combine(x25519_secret: bytes, mlkem_secret: bytes, transcript_hash: bytes) -> bytes:
    """The 48-byte hybrid secret of two shared secrets, bound to ``transcript_hash``."""
    if len(x25519_secret) != X25519_SECRET_BYTES or len(mlkem_secret) != MLKEM_SECRET_BYTES:
        msg = "hybrid combiner needs a 32-byte X25519 secret and a 32-byte ML-KEM secret"
        raise SecurityError(msg)
    if len(transcript_hash) != TRANSCRIPT_HASH_BYTES:
        msg = "hybrid combiner needs a 48-byte SHA-384 transcript hash"
        raise SecurityError(msg)
    hkdf = HKDF(
        algorithm=hashes.SHA384(),
        length=SECRET_BYTES,
        salt=COMBINER_LABEL,
        info=transcript_hash,
    )
    return hkdf.derive(x25519_secret + mlkem_secret)


@dataclass(frozen=True)
class KemOffer:
    """The initiator's public half: an X25519 public key and an ML-KEM-768 encapsulation key."""

    x25519_public: bytes
    mlkem_public: bytes

    def encode(self) -> bytes:
        """Fixed-length wire form (32 + 1184 bytes)."""
        return self.x25519_public + self.mlkem_public

    @classmethod
    def decode(cls, data: bytes) -> KemOffer:
        """Parse the wire form; SecurityError when the length is wrong."""
        if len(data) != X25519_PUBLIC_BYTES + MLKEM_PUBLIC_BYTES:
            msg = f"hybrid key offer has {len(data)} bytes, expected 1216; peer is incompatible"
            raise SecurityError(msg)
        return cls(data[:X25519_PUBLIC_BYTES], data[X25519_PUBLIC_BYTES:])


@dataclass(frozen=True)
class KemReply:
    """The responder's public half: its X25519 public key and the ML-KEM-768 ciphertext."""

    x25519_public: bytes
    mlkem_ciphertext: bytes

    def encode(self) -> bytes:
        """Fixed-length wire form (32 + 1088 bytes)."""
        return self.x25519_public + self.mlkem_ciphertext

    @classmethod
    def decode(cls, data: bytes) -> KemReply:
        """Parse the wire form; SecurityError when the length is wrong."""
        if len(data) != X25519_PUBLIC_BYTES + MLKEM_CIPHERTEXT_BYTES:
            msg = f"hybrid key reply has {len(data)} bytes, expected 1120; peer is incompatible"
            raise SecurityError(msg)
        return cls(data[:X25519_PUBLIC_BYTES], data[X25519_PUBLIC_BYTES:])


class KemInitiator:
    """Ephemeral keys of the side that starts the exchange; use once."""

    def __init__(self, backend: KemBackendName = "cryptography") -> None:
        self._x25519 = x25519.X25519PrivateKey.generate()
        self._mlkem = backends.generate(backend)
        self.offer = KemOffer(
            self._x25519.public_key().public_bytes_raw(), self._mlkem.public_bytes
        )

    def finish(self, reply: KemReply) -> tuple[bytes, bytes]:
        """The X25519 and ML-KEM shared secrets for the responder's ``reply``."""
        try:
            peer = x25519.X25519PublicKey.from_public_bytes(reply.x25519_public)
            classical = self._x25519.exchange(peer)
            post_quantum = self._mlkem.decapsulate(reply.mlkem_ciphertext)
        except (ValueError, InvalidKey) as exc:
            msg = f"hybrid key exchange failed: the peer's key share is invalid ({exc})"
            raise SecurityError(msg) from exc
        return classical, post_quantum


def respond(
    offer: KemOffer, backend: KemBackendName = "cryptography"
) -> tuple[KemReply, bytes, bytes]:
    """Answer an offer: the reply to send, and the X25519 and ML-KEM shared secrets."""
    mine = x25519.X25519PrivateKey.generate()
    try:
        peer_x = x25519.X25519PublicKey.from_public_bytes(offer.x25519_public)
        classical = mine.exchange(peer_x)
        post_quantum, ciphertext = backends.encapsulate(backend, offer.mlkem_public)
    except (ValueError, InvalidKey) as exc:
        msg = f"hybrid key exchange failed: the peer's key offer is invalid ({exc})"
        raise SecurityError(msg) from exc
    return KemReply(mine.public_key().public_bytes_raw(), ciphertext), classical, post_quantum
