"""Node identity: hybrid Ed25519 + ML-DSA-65 signature keys, key files and enrolled (pinned) peers.

A signature is valid only when *both* the Ed25519 and the ML-DSA-65 parts verify, so forging
one needs both schemes broken. Private key files are written with mode 0600 and refused when
group or others can read them; public key files carry the node name and its fingerprint.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from novacron_sdk.errors import SecurityError

PRIVATE_FORMAT = "novacron-pqc-private/1"
PUBLIC_FORMAT = "novacron-pqc-public/1"
FINGERPRINT_LABEL = b"novacron-pqc/v1 identity"
SIGNATURE_CONTEXT = b"novacron-pqc/v1"
ED25519_PUBLIC_BYTES = 32
ED25519_SIGNATURE_BYTES = 64
MLDSA_PUBLIC_BYTES = 1952
MLDSA_SIGNATURE_BYTES = 3309
PUBLIC_BYTES = ED25519_PUBLIC_BYTES + MLDSA_PUBLIC_BYTES
SIGNATURE_BYTES = ED25519_SIGNATURE_BYTES + MLDSA_SIGNATURE_BYTES
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def check_name(name: str) -> str:
    """``name`` when it is a valid node name (letters, digits, ``._-``, 1-64 chars)."""
    if not 1 <= len(name) <= 64 or not set(name) <= _NAME_CHARS or name.startswith("."):
        msg = f"node name {name!r} is invalid: use 1-64 letters, digits, '.', '_' or '-'"
        raise SecurityError(msg)
    return name


@dataclass(frozen=True)
class PublicIdentity:
    """A node's public keys; what peers pin when they enrol the node."""

    name: str
    ed25519_public: bytes
    mldsa_public: bytes

    @cached_property
    def fingerprint(self) -> str:
        """``sha256:<hex>`` over both public keys: the pin compared at every handshake."""
        digest = hashlib.sha256(FINGERPRINT_LABEL + self.encode_keys()).hexdigest()
        return f"sha256:{digest}"

    def encode_keys(self) -> bytes:
        """Both public keys, fixed length (32 + 1952 bytes)."""
        return self.ed25519_public + self.mldsa_public

    # Parsed once per pinned identity (EnrolledKeys.check returns the pinned object), not
    # once per handshake.
    @cached_property
    def _ed25519_key(self) -> ed25519.Ed25519PublicKey:
        return ed25519.Ed25519PublicKey.from_public_bytes(self.ed25519_public)

    @cached_property
    def _mldsa_key(self) -> mldsa.MLDSA65PublicKey:
        return mldsa.MLDSA65PublicKey.from_public_bytes(self.mldsa_public)

    @classmethod
    def decode_keys(cls, name: str, data: bytes) -> PublicIdentity:
        """Parse :meth:`encode_keys` output; SecurityError when the length is wrong."""
        if len(data) != PUBLIC_BYTES:
            msg = f"public identity of {name!r} has {len(data)} bytes, expected {PUBLIC_BYTES}"
            raise SecurityError(msg)
        return cls(check_name(name), data[:ED25519_PUBLIC_BYTES], data[ED25519_PUBLIC_BYTES:])

    def verify(self, signature: bytes, message: bytes) -> None:
        """Raise SecurityError unless both parts of the hybrid ``signature`` verify."""
        if len(signature) != SIGNATURE_BYTES:
            msg = f"signature of {self.name!r} has {len(signature)} bytes, expected hybrid size"
            raise SecurityError(msg)
        try:
            self._ed25519_key.verify(
                signature[:ED25519_SIGNATURE_BYTES], SIGNATURE_CONTEXT + message
            )
            self._mldsa_key.verify(signature[ED25519_SIGNATURE_BYTES:], message, SIGNATURE_CONTEXT)
        except (InvalidSignature, ValueError) as exc:
            msg = (
                f"signature of peer {self.name!r} ({self.fingerprint[:23]}) does not verify: "
                "the peer does not hold the private key it claims"
            )
            raise SecurityError(msg) from exc

    def to_json(self) -> dict[str, Any]:
        """The public key file's content."""
        return {
            "format": PUBLIC_FORMAT,
            "name": self.name,
            "ed25519": _b64(self.ed25519_public),
            "mldsa65": _b64(self.mldsa_public),
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_json(cls, data: Any, *, source: str) -> PublicIdentity:
        """Parse a public key file's content; ``source`` names it in errors."""
        not_ours = f"{source} is not a NovaCron public key file ({PUBLIC_FORMAT})"
        if isinstance(data, dict) and data.get("format") == PRIVATE_FORMAT:
            msg = (
                f"{not_ours}: it is a private key file; enrol the matching public key file "
                "(node.pub next to node.key) and keep the private key on its host"
            )
            raise SecurityError(msg)
        if not isinstance(data, dict) or data.get("format") != PUBLIC_FORMAT:
            raise SecurityError(not_ours)
        missing = [k for k in ("name", "ed25519", "mldsa65") if k not in data]
        if missing:
            msg = f"{not_ours}: fields missing: {', '.join(repr(k) for k in missing)}"
            raise SecurityError(msg)
        try:
            ed = _unb64(data["ed25519"])
            pq = _unb64(data["mldsa65"])
        except ValueError as exc:
            msg = f"{source} is damaged: its keys are not valid base64 ({exc})"
            raise SecurityError(msg) from exc
        try:
            identity = cls.decode_keys(str(data["name"]), ed + pq)
        except SecurityError as exc:
            msg = f"{source} is damaged: {exc}"
            raise SecurityError(msg) from exc
        if len(ed) != ED25519_PUBLIC_BYTES:
            msg = f"{source} is damaged: the Ed25519 key has {len(ed)} bytes"
            raise SecurityError(msg)
        claimed = data.get("fingerprint")
        if claimed is not None and claimed != identity.fingerprint:
            msg = f"{source}: the fingerprint does not match the keys; the file was altered"
            raise SecurityError(msg)
        return identity

    @classmethod
    def load(cls, path: str | Path) -> PublicIdentity:
        """Read a public key file."""
        return cls._read(Path(path))[1]

    @classmethod
    def _read(cls, path: Path) -> tuple[bytes, PublicIdentity]:
        """A public key file's bytes and the identity they hold."""
        try:
            raw = path.read_bytes()
        except OSError as exc:
            msg = f"cannot read public key file {path}: {exc}"
            raise SecurityError(msg) from exc
        try:
            data = json.loads(raw.decode("utf-8"))
        except ValueError as exc:
            msg = f"{path} is not a NovaCron public key file ({PUBLIC_FORMAT}): it is not JSON"
            raise SecurityError(msg) from exc
        return raw, cls.from_json(data, source=str(path))


class UntrustedPeerError(SecurityError):
    """A peer whose key is not enrolled here, or differs from the key enrolled for its name.

    The message says it from this node's side ("here", "this host"); :meth:`explain` with
    this node's name says it to the peer, which shows it on *its* host.
    """

    def __init__(self, peer: PublicIdentity, pinned: PublicIdentity | None = None) -> None:
        self.peer = peer
        self.pinned = pinned
        super().__init__(self.explain())

    def explain(self, node: str | None = None) -> str:
        """The refusal, where ``node`` (the refusing node's name) replaces "here"."""
        where, host = ("here", "this host") if node is None else (f"on {node!r}", node)
        name, fingerprint = self.peer.name, self.peer.fingerprint[:23]
        if self.pinned is None:
            return (
                f"peer {name!r} ({fingerprint}) is not enrolled {where}; to trust it, "
                f"run on {host}: novacron keys enroll {name}.pub"
            )
        return (
            f"peer {name!r} presented key {fingerprint} but the key enrolled for it {where} "
            f"is {self.pinned.fingerprint[:23]}: wrong key; if {name!r} really got new keys, "
            f"run on {host}: novacron keys enroll --replace {name}.pub"
        )


@dataclass(frozen=True)
class NodeIdentity:
    """A node's private signing keys. Its repr never shows key material."""

    name: str
    _ed25519_seed: bytes = field(repr=False)
    _mldsa_seed: bytes = field(repr=False)
    public: PublicIdentity = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ed = ed25519.Ed25519PrivateKey.from_private_bytes(self._ed25519_seed)
        pq = mldsa.MLDSA65PrivateKey.from_seed_bytes(self._mldsa_seed)
        public = PublicIdentity(
            check_name(self.name),
            ed.public_key().public_bytes_raw(),
            pq.public_key().public_bytes_raw(),
        )
        object.__setattr__(self, "public", public)
        object.__setattr__(self, "_ed", ed)
        object.__setattr__(self, "_pq", pq)

    @classmethod
    def generate(cls, name: str) -> NodeIdentity:
        """Fresh keys for node ``name``."""
        return cls(check_name(name), os.urandom(32), os.urandom(32))

    def sign(self, message: bytes) -> bytes:
        """Hybrid signature: Ed25519 (64 bytes) then ML-DSA-65 (3309 bytes)."""
        ed: ed25519.Ed25519PrivateKey = self.__dict__["_ed"]
        pq: mldsa.MLDSA65PrivateKey = self.__dict__["_pq"]
        return ed.sign(SIGNATURE_CONTEXT + message) + pq.sign(message, SIGNATURE_CONTEXT)

    def save(self, private_path: str | Path, public_path: str | Path | None = None) -> Path:
        """Write the private key file (mode 0600) and the public one; returns the public path."""
        private_path = Path(private_path)
        public_path = Path(public_path) if public_path else private_path.with_suffix(".pub")
        private_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        body = {
            "format": PRIVATE_FORMAT,
            "name": self.name,
            "ed25519_seed": _b64(self._ed25519_seed),
            "mldsa65_seed": _b64(self._mldsa_seed),
        }
        # O_EXCL + mode at creation: the secret is never readable by others, not even briefly.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(private_path, flags, 0o600)
        except FileExistsError as exc:
            msg = f"{private_path} exists; remove it first or choose another path (--out)"
            raise SecurityError(msg) from exc
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(body, out)
        public_path.write_text(json.dumps(self.public.to_json(), indent=2) + "\n", "utf-8")
        return public_path

    @classmethod
    def load(cls, path: str | Path) -> NodeIdentity:
        """Read a private key file; refuse it when group or others may read it."""
        path = Path(path)
        try:
            mode = path.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                msg = (
                    f"private key file {path} is accessible by group or others "
                    f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
                )
                raise SecurityError(msg)
            raw = path.read_bytes()
        except OSError as exc:
            msg = f"cannot read private key file {path}: {exc}; create one: novacron keys generate"
            raise SecurityError(msg) from exc
        not_ours = f"{path} is not a NovaCron private key file ({PRIVATE_FORMAT})"
        try:
            data = json.loads(raw.decode("utf-8"))
        except ValueError:  # also UnicodeDecodeError; no detail about a secret file's bytes
            msg = f"{not_ours}: it is not JSON"
            raise SecurityError(msg) from None
        if not isinstance(data, dict) or data.get("format") != PRIVATE_FORMAT:
            raise SecurityError(not_ours)
        try:
            return cls(
                str(data["name"]), _unb64(data["ed25519_seed"]), _unb64(data["mldsa65_seed"])
            )
        except (KeyError, ValueError, TypeError) as exc:
            msg = f"private key file {path} is damaged ({type(exc).__name__})"
            raise SecurityError(msg) from None


class EnrolledKeys:
    """The peers this node trusts: one ``<name>.pub`` file per enrolled node in a directory.

    The directory is the truth, also for a running node: :meth:`check` confirms that the
    pin it found in memory is still on disk, so ``novacron keys remove`` and
    ``novacron keys enroll --replace`` (made by another process) take effect at the next
    handshake, and new enrolments without a restart.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._by_fingerprint: dict[str, PublicIdentity] = {}
        self._by_name: dict[str, PublicIdentity] = {}
        self._sources: dict[str, tuple[Path, bytes]] = {}
        self.reload()

    def reload(self) -> None:
        """Read the directory again (enrolments made while running take effect)."""
        by_fp: dict[str, PublicIdentity] = {}
        by_name: dict[str, PublicIdentity] = {}
        sources: dict[str, tuple[Path, bytes]] = {}
        if self.directory.is_dir():
            for path in sorted(self.directory.glob("*.pub")):
                raw, identity = PublicIdentity._read(path)
                by_fp[identity.fingerprint] = identity
                by_name[identity.name] = identity
                sources[identity.fingerprint] = (path, raw)
        self._by_fingerprint, self._by_name, self._sources = by_fp, by_name, sources

    def __iter__(self) -> Any:
        return iter(sorted(self._by_name.values(), key=lambda i: i.name))

    def __len__(self) -> int:
        return len(self._by_name)

    def _on_disk(self, fingerprint: str) -> bool:
        """Whether the file ``fingerprint`` was read from still holds exactly what was read."""
        source = self._sources.get(fingerprint)
        if source is None:
            return False
        path, raw = source
        try:
            return path.read_bytes() == raw
        except OSError:
            return False  # removed (or unreadable): read the directory again

    def is_pinned(self, fingerprint: str) -> bool:
        """Whether ``fingerprint`` is enrolled, as the directory says now."""
        if fingerprint in self._by_fingerprint and self._on_disk(fingerprint):
            return True
        self.reload()
        return fingerprint in self._by_fingerprint

    def check(self, peer: PublicIdentity) -> PublicIdentity:
        """The pinned identity matching ``peer``; SecurityError when not enrolled or mismatched."""
        # One small file read per handshake: a pin removed or replaced on disk stops working
        # at once, and a peer enrolled after start-up is accepted without a restart.
        if not self._on_disk(peer.fingerprint):
            self.reload()
        pinned = self._by_fingerprint.get(peer.fingerprint)
        if pinned is not None:
            return pinned
        raise UntrustedPeerError(peer, self._by_name.get(peer.name))

    def enroll(self, identity: PublicIdentity, *, replace: bool = False) -> Path:
        """Pin ``identity``; refuse to change an existing pin unless ``replace``."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = self.directory / f"{identity.name}.pub"
        if target.exists() and not replace:
            current = PublicIdentity.load(target)
            if current.fingerprint != identity.fingerprint:
                msg = (
                    f"{identity.name!r} is already enrolled with another key "
                    f"({current.fingerprint[:23]}); pass --replace to change the pin"
                )
                raise SecurityError(msg)
        tmp = target.with_suffix(".pub.tmp")
        tmp.write_text(json.dumps(identity.to_json(), indent=2) + "\n", "utf-8")
        tmp.replace(target)
        self.reload()
        return target

    def remove(self, name: str) -> PublicIdentity:
        """Delete the pin of ``name``; SecurityError when it is not enrolled."""
        target = self.directory / f"{check_name(name)}.pub"
        if not target.exists():
            msg = f"{name!r} is not enrolled in {self.directory}; see: novacron keys list"
            raise SecurityError(msg)
        identity = PublicIdentity.load(target)
        target.unlink()
        self.reload()
        return identity


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes:
    return base64.b64decode(str(text), validate=True)
