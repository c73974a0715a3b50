"""ML-KEM-768 backends: ``cryptography`` (always there) or liboqs-python (only if liboqs is).

liboqs-python imports fine only when the liboqs shared library is installed; otherwise, at
import time, it git-clones and compiles liboqs. :func:`liboqs_library` looks for the library
the way liboqs-python does, *without* importing it, and :func:`load_oqs` refuses to import
``oqs`` unless the library was found, so that build can never be triggered from here.
"""

from __future__ import annotations

import ctypes.util
import importlib
import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, Protocol

from cryptography.hazmat.primitives.asymmetric import mlkem

from novacron_sdk.errors import SecurityError

KemBackendName = Literal["cryptography", "oqs"]
OQS_ALGORITHM = "ML-KEM-768"
_LIBRARY_NAMES = ("liboqs.so", "liboqs.dylib", "oqs.dll")


class KemDecapsulator(Protocol):
    """The initiator's ephemeral ML-KEM key."""

    public_bytes: bytes

    def decapsulate(self, ciphertext: bytes) -> bytes:
        """The shared secret inside ``ciphertext``."""
        ...


class _CryptographyKey:
    def __init__(self) -> None:
        self._key = mlkem.MLKEM768PrivateKey.generate()
        self.public_bytes = self._key.public_key().public_bytes_raw()

    def decapsulate(self, ciphertext: bytes) -> bytes:
        return self._key.decapsulate(ciphertext)


class _OqsKey:  # pragma: no cover - runs only where liboqs is installed
    def __init__(self, oqs: Any) -> None:
        self._kem = oqs.KeyEncapsulation(OQS_ALGORITHM)
        self.public_bytes = bytes(self._kem.generate_keypair())

    def decapsulate(self, ciphertext: bytes) -> bytes:
        return bytes(self._kem.decap_secret(ciphertext))


def liboqs_library() -> str | None:
    """Where the liboqs shared library is, searched like liboqs-python does; None if absent."""
    base = Path(os.environ.get("OQS_INSTALL_PATH") or Path.home() / "_oqs")
    for folder in (base / "lib", base / "lib64", base / "bin"):
        for name in _LIBRARY_NAMES:
            if (folder / name).exists():
                return str(folder / name)
    return ctypes.util.find_library("oqs")


def load_oqs() -> ModuleType:
    """The ``oqs`` module; SecurityError (and no import) when liboqs or the package is missing."""
    if liboqs_library() is None:
        msg = (
            "kem_backend 'oqs' needs the liboqs shared library, which is not installed "
            "(liboqs-python would try to download and build it; NovaCron never lets it). "
            "Install liboqs, or use kem_backend: cryptography"
        )
        raise SecurityError(msg)
    if importlib.util.find_spec("oqs") is None:
        msg = "kem_backend 'oqs' needs liboqs-python: pip install 'novacron-pqc[oqs]'"
        raise SecurityError(msg)
    return importlib.import_module("oqs")  # pragma: no cover - needs liboqs


def generate(backend: KemBackendName) -> KemDecapsulator:
    """A fresh ephemeral ML-KEM-768 key from ``backend``."""
    if backend == "oqs":
        return _OqsKey(load_oqs())  # pragma: no cover - needs liboqs
    return _CryptographyKey()


def encapsulate(backend: KemBackendName, public_bytes: bytes) -> tuple[bytes, bytes]:
    """(shared secret, ciphertext) for the peer's ML-KEM-768 public key."""
    if backend == "oqs":  # pragma: no cover - needs liboqs
        with load_oqs().KeyEncapsulation(OQS_ALGORITHM) as kem:
            ciphertext, secret = kem.encap_secret(public_bytes)
        return bytes(secret), bytes(ciphertext)
    return mlkem.MLKEM768PublicKey.from_public_bytes(public_bytes).encapsulate()
