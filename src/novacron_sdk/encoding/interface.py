"""The encoding contract: stateful page codecs kept in lock step.

An encoder and its decoder are created per migration. Each ``encode`` call turns a
:class:`PageBatch` into one payload; the decoder must be given the payloads in the same order.
A codec that keeps state (duplicates, deltas) must detect a decoder that is out of step and
raise :class:`~novacron_sdk.errors.DesyncError`, never return wrong pages. Malformed payloads
raise :class:`~novacron_sdk.errors.EncodingError` without allocating more than the declared,
bounded batch size.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from novacron_sdk.errors import EncodingError

MAX_BATCH_PAGES = 4096


@dataclass(frozen=True)
class PageBatch:
    """Pages ``indices`` with their content ``data`` (``len(indices) * page_size`` bytes)."""

    indices: Sequence[int]
    data: bytes
    page_size: int = 4096

    def __post_init__(self) -> None:
        if len(self.data) != len(self.indices) * self.page_size:
            msg = (
                f"page batch holds {len(self.data)} bytes for {len(self.indices)} pages of "
                f"{self.page_size}; expected {len(self.indices) * self.page_size}"
            )
            raise EncodingError(msg)

    def page(self, i: int) -> bytes:
        """Content of the i-th page of the batch."""
        return self.data[i * self.page_size : (i + 1) * self.page_size]


@dataclass
class CodecStats:
    """What an encoder did so far.

    ``seconds`` is where its time went, by stage, for codecs that measure it (keys are the
    codec's own; empty when it does not): e.g. the DWCP chain's ``classify``, ``store``,
    ``compress`` (summed over its threads) and ``encode`` (wall-clock time of ``encode``).
    """

    pages_in: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """bytes_out / bytes_in (lower is better); 1.0 before any input."""
        return self.bytes_out / self.bytes_in if self.bytes_in else 1.0


class PageEncoder(ABC):
    """Encoder half. Not thread-safe: one per migration stream of batches."""

    @abstractmethod
    def encode(self, batch: PageBatch) -> bytes:
        """One payload for ``batch``."""

    @abstractmethod
    def stats(self) -> CodecStats:
        """Counters so far."""

    def set_bandwidth_hint(self, bits_per_second: float) -> None:  # noqa: B027 - optional
        """Adaptive codecs use the current bandwidth estimate; others ignore it."""


class PageDecoder(ABC):
    """Decoder half, in lock step with one encoder."""

    @abstractmethod
    def decode(self, payload: bytes) -> PageBatch:
        """The batch ``payload`` encodes."""


class PageCodec(ABC):
    """A codec family; makes matched encoder/decoder pairs."""

    name: ClassVar[str] = ""

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self.settings: dict[str, Any] = dict(settings or {})

    @abstractmethod
    def new_encoder(self, page_size: int = 4096) -> PageEncoder:
        """A fresh encoder for one migration."""

    @abstractmethod
    def new_decoder(self, page_size: int = 4096) -> PageDecoder:
        """A fresh decoder for one migration."""
