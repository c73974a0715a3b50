"""Integrity of a DWCP stream: page fingerprints, the batch hash, the rolling state digest.

Fingerprints are weighted 64-bit sums computed at memory speed: duplicate hints (always
confirmed byte for byte) and the decoder's check of its own state. The batch hash is a real
hash (SHA-256, truncated to 64 bits) of every byte of the payload and of the page fingerprints;
it detects corrupt payloads and state divergence, not an attacker (it is not keyed: the
transport seals and integrity-checks frames). The state digest binds every payload to all the
control data before it.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable

import numpy as np

from novacron_sdk.encoding.interface import MAX_BATCH_PAGES

STATE_SIZE = 8


def next_state(state: bytes, control: bytes) -> bytes:
    """The rolling digest after a batch: binds every control section, in order."""
    return hashlib.blake2b(state + control, digest_size=STATE_SIZE).digest()


@functools.cache
def weights(words: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Odd 64-bit multipliers per word position and per page position (golden-ratio steps)."""
    step = 0x9E3779B97F4A7C15
    word_weights = np.array([(step * (i + 1)) % 2**64 | 1 for i in range(words)], np.uint64)
    row_weights = np.array([(step * (i + 7919)) % 2**64 | 1 for i in range(rows)], np.uint64)
    return word_weights, row_weights


def fingerprints(table: np.ndarray) -> np.ndarray:
    """A 64-bit weighted sum per page (rows of ``table``), every word with its own odd weight.

    Integer arithmetic wraps modulo 2**64, so the order of the additions does not matter and
    every machine gets the same value; einsum's sum-of-products loop needs no temporary array
    and runs at about twice the speed of matmul's here. Identical pages have identical
    fingerprints (duplicate candidates, confirmed by comparing bytes), and any single changed
    word changes the fingerprint.
    """
    word_weights, _ = weights(table.shape[1], MAX_BATCH_PAGES)
    result: np.ndarray = np.einsum("ij,j->i", table, word_weights)
    return result


def batch_hash(spans: Iterable[bytes | memoryview], prints: np.ndarray) -> int:
    """The header's 64-bit batch hash: SHA-256 of ``spans`` (the payload's bytes, as sent, with
    the hash field itself left out) followed by the batch's page fingerprints ``prints``
    (u64 LE each, 0 for zero pages), truncated to 64 bits.

    The payload's bytes cover the header, the operations, the page indices, the references,
    the runs and the literal bytes exactly (no linear sum that two flips can cancel); the
    fingerprints of the rebuilt pages cover what the decoder took from its own state (its page
    store and its long-window history). SHA-256 rather than BLAKE2b: with the SHA extensions
    of current x86 and ARM cores it hashes about twice as fast here (0.6 ms/MiB).
    """
    digest = hashlib.sha256()
    for span in spans:
        digest.update(span)
    digest.update(np.ascontiguousarray(prints, dtype="<u8").data)
    return int.from_bytes(digest.digest()[:8], "little")
