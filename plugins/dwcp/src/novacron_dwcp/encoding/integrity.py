"""Integrity of a DWCP stream: page fingerprints, the batch checksum, the rolling state digest.

Fingerprints and the checksum are weighted 64-bit sums computed with numpy at memory speed;
they detect state divergence and corrupt sections, not an attacker (the transport seals and
integrity-checks frames). The state digest binds every payload to all the control data before it.
"""

from __future__ import annotations

import functools
import hashlib

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


def checksum(fingerprints: np.ndarray) -> int:
    """The batch checksum: page fingerprints, each with its own odd weight per position.

    Any changed word and any pages swapped with each other change it. It guards against
    state divergence and corrupt sections, not against an attacker: the transport seals and
    integrity-checks frames.
    """
    _, row_weights = weights(1, MAX_BATCH_PAGES)
    return int((fingerprints * row_weights[: len(fingerprints)]).sum(dtype=np.uint64))
