"""The contract every page codec must pass: subclass :class:`CodecContract`, give ``codec``.

Example::

    class TestZlibContract(CodecContract):
        @pytest.fixture
        def codec(self) -> PageCodec:
            return ZeroZlibCodec()

Override ``page_size`` to test another page size. The property test generates sequences of
batches with zero pages, pages repeated within and across batches, and indices sent again
in later batches (dirty pages of a migration), and checks ``decode(encode(x)) == x``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from novacron_sdk.encoding.interface import (
    CodecStats,
    PageBatch,
    PageCodec,
    PageDecoder,
    PageEncoder,
)
from novacron_sdk.errors import DesyncError, EncodingError


def make_page(kind: int, seed: int, page_size: int) -> bytes:
    """Page content by kind: 0 zero, 1 one repeated byte, 2 random, 3 half random."""
    rng = random.Random(seed)
    if kind == 0:
        return bytes(page_size)
    if kind == 1:
        return bytes([seed % 256]) * page_size
    if kind == 2:
        return rng.randbytes(page_size)
    return rng.randbytes(page_size // 2) + bytes(page_size - page_size // 2)


def make_batch(pages: list[tuple[int, int, int]], page_size: int) -> PageBatch:
    """A batch from (index, kind, seed) triples."""
    return PageBatch(
        indices=[index for index, _, _ in pages],
        data=b"".join(make_page(kind, seed, page_size) for _, kind, seed in pages),
        page_size=page_size,
    )


_page = st.tuples(
    st.integers(min_value=0, max_value=40),
    st.integers(min_value=0, max_value=3),
    st.integers(min_value=0, max_value=5),
)
DIRTY_SEQUENCES = st.lists(st.lists(_page, max_size=24), min_size=1, max_size=6)


class ForwardingEncoder(PageEncoder):
    """Passes every call to ``inner``: subclass it to observe what an engine asks of an
    encoder (or, in a fault injector, to alter it), without mocking the codec."""

    def __init__(self, inner: PageEncoder) -> None:
        self.inner = inner

    def encode(self, batch: PageBatch) -> bytes:
        """The inner encoder's payload."""
        return self.inner.encode(batch)

    def stats(self) -> CodecStats:
        """The inner encoder's counters."""
        return self.inner.stats()

    def set_bandwidth_hint(self, bits_per_second: float) -> None:
        """Passed on to the inner encoder."""
        self.inner.set_bandwidth_hint(bits_per_second)


class WrappingCodec(PageCodec):
    """``inner`` with each new encoder wrapped by ``wrap`` (a ``ForwardingEncoder`` subclass,
    typically); decoders are the inner codec's own.

    Example: ``plan.codec = WrappingCodec(plan.codec, Recorder)`` before a migration.
    """

    name: ClassVar[str] = "wrapped"

    def __init__(self, inner: PageCodec, wrap: Callable[[PageEncoder], PageEncoder]) -> None:
        super().__init__(inner.settings)
        self.inner = inner
        self.wrap = wrap

    def new_encoder(self, page_size: int = 4096) -> PageEncoder:
        """The inner codec's encoder, wrapped."""
        return self.wrap(self.inner.new_encoder(page_size))

    def new_decoder(self, page_size: int = 4096) -> PageDecoder:
        """The inner codec's decoder."""
        return self.inner.new_decoder(page_size)


class CodecContract:
    """Every page codec must pass this. Subclass it and provide a ``codec`` fixture."""

    @pytest.fixture
    def page_size(self) -> int:
        """The page size encoders and decoders are made with."""
        return 4096

    def _batches(self, page_size: int, count: int, seed: int) -> list[PageBatch]:
        rng = random.Random(seed)
        out = []
        for _ in range(count):
            n = rng.randint(0, 64)
            pages = [(rng.randrange(100), rng.randrange(4), rng.randrange(6)) for _ in range(n)]
            out.append(make_batch(pages, page_size))
        return out

    def test_round_trip_random_batches(self, codec: PageCodec, page_size: int) -> None:
        """Batches with zero, repeated and random pages come back exactly, in order."""
        encoder, decoder = codec.new_encoder(page_size), codec.new_decoder(page_size)
        for batch in self._batches(page_size, 20, seed=7):
            out = decoder.decode(encoder.encode(batch))
            assert list(out.indices) == list(batch.indices)
            assert out.data == batch.data
            assert out.page_size == page_size

    # The suite is meant to run once per codec subclass, which Hypothesis sees as "differing
    # executors"; the generated batches are valid for every codec, so sharing them is fine.
    # The codec fixture is a stateless factory: each example makes its own encoder/decoder.
    # No example database: a suite run from a plugin's tests should leave no files behind.
    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
            HealthCheck.too_slow,
        ],
    )
    @given(batches=DIRTY_SEQUENCES)
    def test_round_trip_property(
        self, codec: PageCodec, page_size: int, batches: list[list[tuple[int, int, int]]]
    ) -> None:
        """decode(encode(x)) == x for any sequence of dirty-page batches."""
        encoder, decoder = codec.new_encoder(page_size), codec.new_decoder(page_size)
        for pages in batches:
            batch = make_batch(pages, page_size)
            out = decoder.decode(encoder.encode(batch))
            assert (list(out.indices), out.data) == (list(batch.indices), batch.data)

    def test_empty_batch(self, codec: PageCodec, page_size: int) -> None:
        """A batch with no pages round-trips."""
        encoder, decoder = codec.new_encoder(page_size), codec.new_decoder(page_size)
        out = decoder.decode(encoder.encode(PageBatch([], b"", page_size)))
        assert (list(out.indices), out.data) == ([], b"")

    def test_skipped_payload_raises_desync(self, codec: PageCodec, page_size: int) -> None:
        """A decoder that misses a payload raises DesyncError instead of decoding wrongly."""
        encoder, decoder = codec.new_encoder(page_size), codec.new_decoder(page_size)
        payloads = [encoder.encode(b) for b in self._batches(page_size, 3, seed=11)]
        decoder.decode(payloads[0])
        with pytest.raises(DesyncError):
            decoder.decode(payloads[2])

    def test_repeated_payload_raises_desync(self, codec: PageCodec, page_size: int) -> None:
        """The same payload decoded twice raises DesyncError."""
        encoder, decoder = codec.new_encoder(page_size), codec.new_decoder(page_size)
        payloads = [encoder.encode(b) for b in self._batches(page_size, 2, seed=12)]
        decoder.decode(payloads[0])
        decoder.decode(payloads[1])
        with pytest.raises(DesyncError):
            decoder.decode(payloads[1])

    @pytest.mark.parametrize("cut", [0, 1, 10, 0.5, -1])
    def test_truncated_payload_raises_encoding_error(
        self, codec: PageCodec, page_size: int, cut: float
    ) -> None:
        """A payload cut short anywhere raises EncodingError."""
        encoder, decoder = codec.new_encoder(page_size), codec.new_decoder(page_size)
        pages = [(i, i % 4, i) for i in range(16)]
        payload = encoder.encode(make_batch(pages, page_size))
        end = int(len(payload) * cut) if isinstance(cut, float) else cut % len(payload)
        with pytest.raises(EncodingError):
            decoder.decode(payload[:end])

    def test_garbage_raises_encoding_error(self, codec: PageCodec, page_size: int) -> None:
        """Random bytes are not a payload."""
        rng = random.Random(5)
        for size in (3, 64, 5000):
            with pytest.raises(EncodingError):
                codec.new_decoder(page_size).decode(rng.randbytes(size))

    def test_stats(self, codec: PageCodec, page_size: int) -> None:
        """Stats count pages and bytes in, and bytes out as the payloads' total length."""
        encoder = codec.new_encoder(page_size)
        batches = self._batches(page_size, 5, seed=13)
        payloads = [encoder.encode(b) for b in batches]
        stats = encoder.stats()
        assert stats.pages_in == sum(len(b.indices) for b in batches)
        assert stats.bytes_in == sum(len(b.data) for b in batches)
        assert stats.bytes_out == sum(len(p) for p in payloads)
        assert stats.ratio == pytest.approx(stats.bytes_out / stats.bytes_in)
        assert all(count >= 0 for count in stats.by_kind.values())
        assert all(seconds >= 0 for seconds in stats.seconds.values())
