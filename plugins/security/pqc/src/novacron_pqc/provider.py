"""The ``pqc`` security provider: a mutually authenticated hybrid handshake over a channel.

Four messages, all hashed into a SHA-384 transcript:

1. HELLO  (initiator): settings, name, hybrid public identity, KEM offer (X25519 + ML-KEM-768).
2. REPLY  (responder): settings, name, identity, KEM reply, hybrid signature over the transcript.
3. FINISH (initiator): hybrid signature over the transcript, key-confirmation MAC.
4. DONE   (responder): key-confirmation MAC.

The settings of HELLO and REPLY also say whether that side's transport takes sealed frames
without its own checksum (``unchecked_frames``); a side sends such frames only to a peer that
said so, and peers that do not know the key never get them.

Each side checks that the other's identity is enrolled (pinned) before it does any further
work, and answers a refusal with an ERROR message naming the reason, so both ends fail with a
clear :class:`~novacron_sdk.errors.SecurityError`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import ValidationError

from novacron_pqc import backends, kem
from novacron_pqc.identity import (
    EnrolledKeys,
    NodeIdentity,
    PublicIdentity,
    UntrustedPeerError,
)
from novacron_pqc.session import AEADS, AeadSession, expand
from novacron_pqc.settings import SecuritySettings
from novacron_pqc.wire import HandshakeMsg, pack, unpack
from novacron_sdk.config.checks import validation_problems
from novacron_sdk.errors import ConfigError, NovaCronError, SecurityError
from novacron_sdk.security.interface import SecurityProvider
from novacron_sdk.transport.interface import Channel

log = logging.getLogger(__name__)

TRANSCRIPT_LABEL = b"novacron-pqc/v1 handshake"
MAX_SETTINGS_BYTES = 4096
"""Largest settings field accepted in HELLO or REPLY (they carry a few short keys)."""
# What parsing a peer's fields may raise; each becomes a SecurityError and a refusal.
_MALFORMED = (SecurityError, ValueError, TypeError, RecursionError)
Role = Literal["initiator", "responder"]


class _Transcript:
    """Running SHA-384 over every handshake message."""

    def __init__(self) -> None:
        self._hash = hashlib.sha384(TRANSCRIPT_LABEL)

    def add(self, part: bytes) -> None:
        """Absorb one message."""
        self._hash.update(len(part).to_bytes(4, "big"))
        self._hash.update(part)

    def digest(self) -> bytes:
        """The hash so far (the running state carries on)."""
        return self._hash.copy().digest()


def _mac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha384).digest()


class PqcSecurityProvider(SecurityProvider):
    """Hybrid X25519+ML-KEM-768 key exchange authenticated by Ed25519+ML-DSA-65 signatures.

    Settings are the fields of the ``security`` config section; tests and embedders may also
    pass ``identity`` (a NodeIdentity) and ``enrolled`` (an EnrolledKeys) objects directly.
    """

    name: ClassVar[str] = "pqc"

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        objects = {k: self.settings.pop(k) for k in ("identity", "enrolled") if k in self.settings}
        try:
            self.config = SecuritySettings.model_validate(self.settings)
        except ValidationError as exc:
            problems = validation_problems(exc, SecuritySettings, "security.")
            msg = f"invalid settings for the pqc security provider: {problems}"
            raise ConfigError(msg) from exc
        identity = objects.get("identity")
        enrolled = objects.get("enrolled")
        if self.config.kem_backend == "oqs":
            backends.load_oqs()  # fail at start-up, not at the first handshake
        self.identity: NodeIdentity = (
            identity
            if isinstance(identity, NodeIdentity)
            else NodeIdentity.load(self.config.identity_path())
        )
        self.enrolled: EnrolledKeys = (
            enrolled
            if isinstance(enrolled, EnrolledKeys)
            else EnrolledKeys(self.config.enrolled_path())
        )

    def still_trusts(self, fingerprint: str) -> bool:
        """Whether the peer with ``fingerprint`` is still enrolled (the directory says now).

        The control-API middleware asks this on every request, so an API session ends
        when its peer is un-enrolled or its key replaced.
        """
        return self.enrolled.is_pinned(fingerprint)

    def _offer(self, channel: Channel) -> dict[str, Any]:
        return {
            "aead": self.config.aead,
            "rotate_bytes": self.config.rotate_bytes,
            "unchecked_frames": _accept_unchecked(channel),
        }

    async def handshake(self, channel: Channel, *, role: Role) -> AeadSession:
        """Authenticate the peer over ``channel`` and agree on keys; SecurityError on failure."""
        try:
            async with asyncio.timeout(self.config.handshake_timeout_s):
                if role == "initiator":
                    return await self._initiate(channel)
                return await self._respond(channel)
        except TimeoutError as exc:
            msg = (
                f"handshake ({role}) timed out after {self.config.handshake_timeout_s} s; "
                "is the peer running with security enabled?"
            )
            raise SecurityError(msg) from exc

    async def _refuse(self, channel: Channel, error: SecurityError) -> SecurityError:
        """Tell the peer why (best effort), close, and hand the error back to raise."""
        log.warning("handshake refused: %s", error)
        # The peer shows the reason on its own host: "not enrolled here" must name this node.
        reason = (
            error.explain(self.identity.name)
            if isinstance(error, UntrustedPeerError)
            else str(error)
        )
        try:
            await channel.send(pack(HandshakeMsg.ERROR, reason.encode()))
            await channel.drain()
        except (NovaCronError, OSError):
            pass
        return error

    async def _initiate(self, channel: Channel) -> AeadSession:
        me = self.identity
        transcript = _Transcript()
        offer, kex = self._kex_initiate()
        hello = pack(
            HandshakeMsg.HELLO,
            json.dumps(self._offer(channel)).encode(),
            me.name.encode(),
            me.public.encode_keys(),
            offer,
            os.urandom(32),
        )
        transcript.add(hello)
        await channel.send(hello)
        reply = await channel.recv()
        fields = unpack(reply, HandshakeMsg.REPLY, 6)
        settings_raw, name, keys, kem_reply, _random, signature = fields
        try:
            peer = self.enrolled.check(PublicIdentity.decode_keys(name.decode(), keys))
            theirs = _parse_settings(settings_raw)
            agreed = self._agree(theirs, responder=False)
        except _MALFORMED as exc:
            raise await self._refuse(channel, _as_security_error(exc)) from exc
        transcript.add(reply[: len(reply) - len(signature) - 4])
        th2 = transcript.digest()
        try:
            self._verify(peer, signature, b"responder" + th2)
        except SecurityError as exc:
            raise await self._refuse(channel, exc) from None
        secret = self._kex_finish(kex, kem_reply, th2)
        transcript.add(signature)
        th3 = transcript.digest()
        finish = pack(
            HandshakeMsg.FINISH,
            self._sign(b"initiator" + th3),
            _mac(expand(secret, b"finished initiator", 48), th3),
        )
        transcript.add(finish)
        th4 = transcript.digest()
        await channel.send(finish)
        (confirm,) = unpack(await channel.recv(), HandshakeMsg.DONE, 1)
        if not hmac.compare_digest(confirm, _mac(expand(secret, b"finished responder", 48), th4)):
            msg = f"key confirmation from {peer.name!r} failed: the handshake was tampered with"
            raise SecurityError(msg)
        unchecked = theirs.get("unchecked_frames") is True
        return self._session(peer, agreed, secret, th4, role="initiator", unchecked=unchecked)

    async def _respond(self, channel: Channel) -> AeadSession:
        me = self.identity
        transcript = _Transcript()
        hello = await channel.recv()
        try:
            settings_raw, name, keys, offer_raw, _random = unpack(hello, HandshakeMsg.HELLO, 5)
            peer = self.enrolled.check(PublicIdentity.decode_keys(name.decode(), keys))
            theirs = _parse_settings(settings_raw)
            agreed = self._agree(theirs, responder=True)
            kem_reply, shared = self._kex_respond(offer_raw)
        except _MALFORMED as exc:
            raise await self._refuse(channel, _as_security_error(exc)) from exc
        transcript.add(hello)
        reply_body = pack(
            HandshakeMsg.REPLY,
            json.dumps({**agreed, "unchecked_frames": _accept_unchecked(channel)}).encode(),
            me.name.encode(),
            me.public.encode_keys(),
            kem_reply,
            os.urandom(32),
        )
        transcript.add(reply_body)
        th2 = transcript.digest()
        signature = self._sign(b"responder" + th2)
        secret = self._kex_secret(shared, th2)
        await channel.send(reply_body + len(signature).to_bytes(4, "big") + signature)
        transcript.add(signature)
        th3 = transcript.digest()
        finish = await channel.recv()
        peer_signature, confirm = unpack(finish, HandshakeMsg.FINISH, 2)
        try:
            self._verify(peer, peer_signature, b"initiator" + th3)
            if not hmac.compare_digest(
                confirm, _mac(expand(secret, b"finished initiator", 48), th3)
            ):
                msg = f"key confirmation from {peer.name!r} failed: the handshake was tampered with"
                raise SecurityError(msg)
        except SecurityError as exc:
            raise await self._refuse(channel, exc) from None
        transcript.add(finish)
        th4 = transcript.digest()
        await channel.send(
            pack(HandshakeMsg.DONE, _mac(expand(secret, b"finished responder", 48), th4))
        )
        unchecked = theirs.get("unchecked_frames") is True
        return self._session(peer, agreed, secret, th4, role="responder", unchecked=unchecked)

    # Key exchange and signatures sit behind these methods so that benchmarks/security.py can
    # time this very handshake with only one of them swapped for its classical counterpart.
    # Nothing in the product overrides them.
    def _kex_initiate(self) -> tuple[bytes, kem.KemInitiator]:
        """A fresh ephemeral key offer: its wire form, and the state that finishes it."""
        kex = kem.KemInitiator(self.config.kem_backend)
        return kex.offer.encode(), kex

    def _kex_finish(self, state: Any, reply: bytes, transcript_hash: bytes) -> bytes:
        """The initiator's session secret from the responder's key reply."""
        x_secret, pq_secret = state.finish(kem.KemReply.decode(reply))
        return kem.combine(x_secret, pq_secret, transcript_hash)

    def _kex_respond(self, offer: bytes) -> tuple[bytes, tuple[bytes, bytes]]:
        """The reply to an offer, and the shared secrets it yields."""
        reply, x_secret, pq_secret = kem.respond(
            kem.KemOffer.decode(offer), self.config.kem_backend
        )
        return reply.encode(), (x_secret, pq_secret)

    def _kex_secret(self, shared: Any, transcript_hash: bytes) -> bytes:
        """The responder's session secret from the shared secrets of :meth:`_kex_respond`."""
        return kem.combine(shared[0], shared[1], transcript_hash)

    def _sign(self, message: bytes) -> bytes:
        """This node's identity signature over ``message``."""
        return self.identity.sign(message)

    def _verify(self, peer: PublicIdentity, signature: bytes, message: bytes) -> None:
        """Raise SecurityError unless ``signature`` is ``peer``'s over ``message``."""
        peer.verify(signature, message)

    def _agree(self, theirs: Any, *, responder: bool) -> dict[str, Any]:
        """Settings both sides use: the responder picks, the initiator checks the pick."""
        if not isinstance(theirs, dict):
            msg = "handshake settings are not a JSON object"
            raise SecurityError(msg)
        aead = theirs.get("aead")
        rotate = theirs.get("rotate_bytes")
        if aead not in AEADS or type(rotate) is not int or rotate < 1:
            msg = f"peer proposed unsupported settings aead={aead!r}, rotate_bytes={rotate!r}"
            raise SecurityError(msg)
        if responder:
            # Both AEADs are strong: honouring the initiator's choice is no downgrade.
            return {"aead": aead, "rotate_bytes": min(rotate, self.config.rotate_bytes)}
        if rotate > self.config.rotate_bytes:
            msg = f"peer chose rotate_bytes={rotate}, above this side's {self.config.rotate_bytes}"
            raise SecurityError(msg)
        if aead != self.config.aead:
            msg = f"peer chose AEAD {aead!r}, this side offered {self.config.aead!r}"
            raise SecurityError(msg)
        return {"aead": aead, "rotate_bytes": rotate}

    def _session(
        self,
        peer: PublicIdentity,
        agreed: Mapping[str, Any],
        secret: bytes,
        transcript_hash: bytes,
        *,
        role: Role,
        unchecked: bool,
    ) -> AeadSession:
        i2r = expand(secret, b"traffic initiator " + transcript_hash, 48)
        r2i = expand(secret, b"traffic responder " + transcript_hash, 48)
        log.info("authenticated peer %s (%s) as %s", peer.name, peer.fingerprint[:23], role)
        return AeadSession(
            peer_id=peer.name,
            peer_fingerprint=peer.fingerprint,
            aead=str(agreed["aead"]),
            send_secret=i2r if role == "initiator" else r2i,
            recv_secret=r2i if role == "initiator" else i2r,
            exporter_secret=expand(secret, b"exporter " + transcript_hash, 48),
            rotate_bytes=int(agreed["rotate_bytes"]),
            rotate_seconds=self.config.rotate_seconds,
            peer_accepts_unchecked_frames=unchecked,
        )


def _accept_unchecked(channel: Channel) -> bool:
    """Let the transport take sealed frames without its checksum, if it can; whether it does.

    Safe from the first handshake message on: the signed transcript covers every handshake
    message and the AEAD tag every later frame, so the checksum adds nothing.
    """
    accept = getattr(channel, "ex_accept_unchecked", None)
    return callable(accept) and accept() is True


def _parse_settings(raw: bytes) -> dict[str, Any]:
    """The peer's handshake settings: a small JSON object, else SecurityError."""
    if len(raw) > MAX_SETTINGS_BYTES:
        msg = f"handshake settings of {len(raw)} bytes exceed the limit of {MAX_SETTINGS_BYTES}"
        raise SecurityError(msg)
    try:
        settings = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        msg = f"handshake settings are not valid JSON ({type(exc).__name__})"
        raise SecurityError(msg) from exc
    if not isinstance(settings, dict):
        msg = "handshake settings are not a JSON object"
        raise SecurityError(msg)
    return settings


def _as_security_error(exc: Exception) -> SecurityError:
    if isinstance(exc, SecurityError):
        return exc
    return SecurityError(f"malformed handshake message: {exc}")
