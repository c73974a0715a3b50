"""The DWCP codec chain: contract suite, round-trip properties, lock step and cache symmetry."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from novacron_dwcp.encoding import compress
from novacron_dwcp.encoding.chain import DwcpCodec, DwcpDecoder, DwcpEncoder
from novacron_dwcp.encoding.wire import (
    METHOD_LZ4,
    METHOD_RAW,
    METHOD_ZSTD,
    METHOD_ZSTD_LONG,
    parse_header,
)
from novacron_sdk.encoding.interface import MAX_BATCH_PAGES, PageBatch, PageCodec
from novacron_sdk.errors import EncodingError
from novacron_sdk.plugin.manager import build_plugin_manager
from novacron_sdk.testing.codec import CodecContract

PAGE = 4096


class TestDwcpContract(CodecContract):
    """The builtin codec contract, with default settings."""

    @pytest.fixture
    def codec(self) -> PageCodec:
        return DwcpCodec()


class TestDwcpContractSmallCacheLz4(CodecContract):
    """The contract again with a 4-page cache (constant eviction), lz4 and 512-byte pages."""

    @pytest.fixture
    def page_size(self) -> int:
        return 512

    @pytest.fixture
    def codec(self) -> PageCodec:
        return DwcpCodec({"cache_mib": 4 * 512 / (1 << 20), "method": "lz4"})


class TestDwcpContractRaw(CodecContract):
    """The contract with general compression off (the fast-link case)."""

    @pytest.fixture
    def codec(self) -> PageCodec:
        return DwcpCodec({"method": "raw"})


def _pair(settings_: dict[str, object] | None = None) -> tuple[DwcpEncoder, DwcpDecoder]:
    codec = DwcpCodec(settings_)
    return codec.new_encoder(PAGE), codec.new_decoder(PAGE)


class Memory:
    """A guest's memory that a random workload dirties: sparse writes, copies, zeroing."""

    def __init__(self, pages: int, seed: int, page_size: int = PAGE) -> None:
        self.rng = random.Random(seed)
        self.size = page_size
        self.pages = [bytearray(page_size) for _ in range(pages)]
        for page in self.pages[::3]:
            page[:] = self.rng.randbytes(page_size)

    def dirty(self, index: int, how: int) -> None:
        """Change one page: 0 sparse write, 1 rewrite, 2 copy of another page, 3 zero, 4 none."""
        page = self.pages[index]
        if how == 0:
            for _ in range(self.rng.randint(1, 6)):
                length = self.rng.randint(1, 64)
                offset = self.rng.randrange(self.size - length)
                page[offset : offset + length] = self.rng.randbytes(length)
        elif how == 1:
            page[:] = self.rng.randbytes(self.size // 2) + bytes(self.size // 2)
        elif how == 2:
            page[:] = self.pages[self.rng.randrange(len(self.pages))]
        elif how == 3:
            page[:] = bytes(self.size)

    def batch(self, indices: list[int]) -> PageBatch:
        """The current content of ``indices``."""
        return PageBatch(indices, b"".join(bytes(self.pages[i]) for i in indices), self.size)


ROUNDS = st.lists(
    st.lists(st.tuples(st.integers(0, 47), st.integers(0, 4)), max_size=40), min_size=1, max_size=8
)
PROPERTY_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@PROPERTY_SETTINGS
@given(
    rounds=ROUNDS,
    seed=st.integers(0, 2**16),
    cache_pages=st.sampled_from([1, 3, 16, 1000]),
    method=st.sampled_from([m.name for m in compress.METHODS]),
)
def test_random_dirty_sequences_round_trip(
    rounds: list[list[tuple[int, int]]], seed: int, cache_pages: int, method: str
) -> None:
    """Any sequence of dirty batches (repeats, copies, zeroing, eviction) decodes exactly."""
    encoder, decoder = _pair({"cache_mib": cache_pages * PAGE / (1 << 20), "method": method})
    memory = Memory(48, seed)
    for round_ in rounds:
        for index, how in round_:
            memory.dirty(index, how)
        # Indices may repeat within a batch: the later copy must win at the receiver too.
        batch = memory.batch([index for index, _ in round_])
        out = decoder.decode(encoder.encode(batch))
        assert list(out.indices) == list(batch.indices)
        assert out.data == batch.data
        assert decoder.cache is not None
        assert encoder.cache.items() == decoder.cache.items()


def _page(kind: int, seed: int, patch: bytes, offset: int, size: int) -> bytes:
    """A page from a small description: zero, random, a repeated byte, or text; then a patch."""
    rng = random.Random(seed)
    base = [bytes(size), rng.randbytes(size), bytes([seed % 256]) * size,
            (b"line %d\n" % seed) * size][kind][:size]  # fmt: skip
    offset %= size - len(patch) + 1
    return base[:offset] + patch + base[offset + len(patch) :]


PAGES = st.tuples(
    st.integers(0, 3), st.integers(0, 7), st.binary(max_size=24), st.integers(0, 10**6)
)


@PROPERTY_SETTINGS
@given(
    batches=st.lists(
        st.lists(st.tuples(st.integers(0, 2**62 - 1) | st.integers(0, 20), PAGES), max_size=20),
        min_size=1,
        max_size=5,
    ),
    page_size=st.sampled_from([64, 512, 4096]),
)
def test_random_page_batches_round_trip(
    batches: list[list[tuple[int, tuple[int, int, bytes, int]]]], page_size: int
) -> None:
    """Arbitrary indices (up to 2**62-1) and page contents round-trip, for any page size."""
    codec = DwcpCodec()
    encoder, decoder = codec.new_encoder(page_size), codec.new_decoder(page_size)
    for pages in batches:
        indices = [index for index, _ in pages]
        data = b"".join(_page(*spec, size=page_size) for _, spec in pages)
        out = decoder.decode(encoder.encode(PageBatch(indices, data, page_size)))
        assert (list(out.indices), out.data, out.page_size) == (indices, data, page_size)


def test_every_operation_is_used_and_counted() -> None:
    """A realistic sequence exercises zero, same, duplicate, delta and full pages."""
    encoder, decoder = _pair()
    memory = Memory(64, seed=3)
    memory.pages[5][:] = memory.pages[0]
    indices = list(range(64))
    decoder.decode(encoder.encode(memory.batch(indices)))
    memory.dirty(1, 3)
    memory.dirty(3, 0)
    memory.dirty(6, 1)
    memory.pages[8][:] = memory.pages[9]
    decoder.decode(encoder.encode(memory.batch(indices)))
    kinds = encoder.stats().by_kind
    for kind in ("zero", "same", "duplicate", "delta", "full"):
        assert kinds.get(kind, 0) > 0, kind
    assert kinds["batches:zstd-1"] == 2


def test_encode_time_is_accounted_by_stage() -> None:
    """stats().seconds: classification, store and compression (one thread: all on the
    calling thread) fit inside the wall-clock time of encode, and grow with every batch."""
    encoder, decoder = _pair({"threads": 1})
    memory = Memory(256, seed=5)
    batch = memory.batch(list(range(256)))
    decoder.decode(encoder.encode(batch))
    first = dict(encoder.stats().seconds)
    assert set(first) == {"classify", "store", "compress", "encode"}
    assert all(seconds > 0 for seconds in first.values())
    assert first["classify"] + first["store"] + first["compress"] <= first["encode"]
    memory.dirty(7, 1)  # rewritten: a whole page to compress
    decoder.decode(encoder.encode(memory.batch(list(range(256)))))
    second = encoder.stats().seconds
    assert all(second[stage] > first[stage] for stage in first)


def test_unchanged_batch_is_small() -> None:
    """Sending pages the receiver already has costs a few bytes per page, not the pages."""
    encoder, decoder = _pair()
    memory = Memory(256, seed=4)
    batch = memory.batch(list(range(256)))
    first = encoder.encode(batch)
    decoder.decode(first)
    again = encoder.encode(batch)
    assert decoder.decode(again).data == batch.data
    assert len(again) < 256 * 4
    nonzero = sum(1 for page in memory.pages if any(page))
    assert encoder.stats().by_kind["same"] == nonzero


def test_sparse_changes_are_sent_as_deltas() -> None:
    """A few changed bytes in a random page cost far less than the page."""
    encoder, decoder = _pair({"method": "raw"})
    rng = random.Random(9)
    page = bytearray(rng.randbytes(PAGE))
    decoder.decode(encoder.encode(PageBatch([7], bytes(page))))
    page[100:104] = b"\xff\xfe\xfd\xfc"
    payload = encoder.encode(PageBatch([7], bytes(page)))
    assert decoder.decode(payload).data == bytes(page)
    assert len(payload) < 200
    assert encoder.stats().by_kind["delta"] == 1


def test_large_batch_is_compressed_in_parallel_chunks() -> None:
    """A full-size batch is cut into several chunks (one per thread) and still round-trips."""
    encoder, decoder = _pair({"threads": 4})
    rng = random.Random(2)
    text = b"".join(b"key:%d value:%d\n" % (i, rng.randrange(10**6)) for i in range(400_000))
    data = text[: MAX_BATCH_PAGES * PAGE // 4]
    batch = PageBatch(list(range(len(data) // PAGE)), data)
    payload = encoder.encode(batch)
    assert len(parse_header(payload, PAGE).chunks) > 1
    assert decoder.decode(payload).data == data


@pytest.mark.parametrize(
    ("bits_per_second", "kind"),
    [(1e12, METHOD_RAW), (1e9, None), (1e6, METHOD_ZSTD_LONG)],
)
def test_bandwidth_hint_chooses_method(bits_per_second: float, kind: int | None) -> None:
    """Faster-than-compression links get raw pages; slow links get long-window zstd."""
    encoder, decoder = _pair()
    encoder.set_bandwidth_hint(bits_per_second)
    memory = Memory(128, seed=5)
    payload = encoder.encode(memory.batch(list(range(128))))
    header = parse_header(payload, PAGE)
    assert decoder.decode(payload).data == memory.batch(list(range(128))).data
    if kind is not None:
        assert header.method == kind
    else:
        assert header.method in (METHOD_LZ4, METHOD_ZSTD, METHOD_ZSTD_LONG)


def test_slow_link_selects_the_smallest_output() -> None:
    """At 1 Mbit/s bytes matter more than CPU: the selector picks the smallest output."""
    selector = compress.AdaptiveSelector()
    selector.bandwidth = 1e6
    chosen = selector.choose(threads=2)
    assert chosen.relative_ratio == min(m.relative_ratio for m in compress.METHODS[1:])
    selector.bandwidth = None
    assert selector.choose(threads=2) is compress.DEFAULT_METHOD


def test_selector_learns_from_measurements() -> None:
    """A method measured as slow stops being chosen on a fast link."""
    selector = compress.AdaptiveSelector()
    selector.bandwidth = 4e9
    chosen = selector.choose(threads=1)
    for _ in range(30):
        selector.observe(chosen, 1 << 20, 1 << 19, 1.0)
    assert selector.choose(threads=1) is not chosen


def test_registered_as_default_codec() -> None:
    """Installing novacron-dwcp makes the chain the highest-priority codec."""
    codecs = build_plugin_manager().codecs
    assert codecs.get("dwcp") is DwcpCodec
    assert codecs.default_name() == "dwcp"


@pytest.mark.parametrize(
    "settings_",
    [{"method": "brotli"}, {"cache_mib": -1}, {"cache_mib": "big"}, {"threads": 0}],
)
def test_bad_settings_are_rejected(settings_: dict[str, object]) -> None:
    """Settings errors name the setting and the allowed values."""
    with pytest.raises(EncodingError, match="setting"):
        DwcpCodec(settings_).new_encoder(PAGE)


def test_unknown_settings_are_rejected_at_both_ends() -> None:
    """A typo in a setting name is an error naming the closest setting, not ignored."""
    codec = DwcpCodec({"cache_mb": 64})
    with pytest.raises(EncodingError, match="'cache_mb' \\(did you mean 'cache_mib'\\?\\)"):
        codec.new_encoder(PAGE)
    with pytest.raises(EncodingError, match="unknown dwcp codec setting 'cache_mb'"):
        codec.new_decoder(PAGE)
    every = {"cache_mib": 1, "threads": 1, "method": "zstd-1", "max_cache_mib": 8}
    assert DwcpCodec({**every, "native": False}).new_encoder(PAGE).stats().pages_in == 0


@pytest.mark.parametrize("page_size", [0, 100, 65536])
def test_unsupported_page_sizes_are_rejected(page_size: int) -> None:
    """Page sizes the wire format cannot carry fail at creation."""
    with pytest.raises(EncodingError, match="page size"):
        DwcpCodec().new_encoder(page_size)
    with pytest.raises(EncodingError, match="page size"):
        DwcpCodec().new_decoder(page_size)


def test_bad_batches_are_rejected() -> None:
    """Negative indices, wrong page sizes and oversized batches are refused before encoding."""
    encoder, _ = _pair()
    with pytest.raises(EncodingError, match="indices"):
        encoder.encode(PageBatch([-1], bytes(PAGE)))
    with pytest.raises(EncodingError, match="512-byte pages"):
        encoder.encode(PageBatch([1], bytes(512), 512))
    with pytest.raises(EncodingError, match="at most"):
        encoder.encode(
            PageBatch(list(range(MAX_BATCH_PAGES + 1)), bytes(PAGE * (MAX_BATCH_PAGES + 1)))
        )
    # A refused batch did not touch the state: the pair still works.
    encoder2, decoder2 = _pair()
    assert decoder2.decode(encoder2.encode(PageBatch([1], bytes(PAGE)))).data == bytes(PAGE)


def test_decoder_refuses_a_cache_larger_than_allowed() -> None:
    """The decoder bounds the cache the encoder declares (max_cache_mib)."""
    encoder = DwcpCodec({"cache_mib": 64}).new_encoder(PAGE)
    decoder = DwcpCodec({"max_cache_mib": 16}).new_decoder(PAGE)
    with pytest.raises(EncodingError, match="max_cache_mib"):
        decoder.decode(encoder.encode(PageBatch([0], bytes(PAGE))))


def test_long_window_matches_content_sent_in_earlier_batches() -> None:
    """Content moved to other pages (not page-aligned) costs little with zstd-1-long."""
    rng = random.Random(11)
    text = rng.randbytes(64 * PAGE)
    moved = text[100:] + text[:100]
    sizes = {}
    for method in ("zstd-1", "zstd-1-long"):
        encoder, decoder = _pair({"method": method})
        for start, data in ((0, text), (1000, moved)):
            batches = [
                PageBatch(list(range(start + i, start + i + 16)), data[i * PAGE : (i + 16) * PAGE])
                for i in range(0, 64, 16)
            ]
            payloads = [encoder.encode(batch) for batch in batches]
            for batch, payload in zip(batches, payloads, strict=True):
                assert decoder.decode(payload).data == batch.data
        sizes[method] = sum(len(p) for p in payloads)
    assert sizes["zstd-1-long"] < sizes["zstd-1"] / 10


def test_methods_can_change_between_batches() -> None:
    """The selector may switch methods at any batch; long-window history survives it."""
    encoder, decoder = _pair()
    memory = Memory(64, seed=12)
    rng = random.Random(12)
    for round_ in range(12):
        encoder.forced = compress.METHODS[round_ % len(compress.METHODS)]
        for index in rng.sample(range(64), 10):
            memory.dirty(index, rng.randrange(5))
        batch = memory.batch(sorted(rng.sample(range(64), 20)))
        assert decoder.decode(encoder.encode(batch)).data == batch.data
