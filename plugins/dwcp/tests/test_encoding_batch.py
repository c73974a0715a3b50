"""DWCP chain, batch-wide paths: copies within a batch, parallel parts, bulk eviction, store."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from novacron_dwcp.encoding import compress
from novacron_dwcp.encoding.cache import PageStore
from novacron_dwcp.encoding.chain import DwcpCodec, DwcpDecoder, DwcpEncoder
from novacron_dwcp.encoding.wire import (
    FLAG_NEW_STREAMS,
    METHOD_ZSTD_LONG,
    OP_COPY,
    OP_FULL,
    parse_header,
)
from novacron_sdk.encoding.interface import PageBatch
from novacron_sdk.errors import EncodingError

PAGE = 512  # small pages keep batches of several parts cheap


def _pair(settings_: dict[str, object]) -> tuple[DwcpEncoder, DwcpDecoder]:
    codec = DwcpCodec(settings_)
    return codec.new_encoder(PAGE), codec.new_decoder(PAGE)


def _content(kind: int, seed: int) -> bytes:
    """Page content from a small alphabet, so that duplicates and copies are frequent."""
    rng = random.Random(seed % 7)
    return [bytes(PAGE), rng.randbytes(PAGE), bytes([seed % 5]) * PAGE,
            rng.randbytes(PAGE // 2) + bytes(PAGE // 2)][kind]  # fmt: skip


SPAN = 8
PAGES = st.lists(
    st.tuples(st.integers(0, 300), st.integers(0, 3), st.integers(0, 20), st.integers(0, PAGE - 8)),
    # Each element gives SPAN pages: enough whole pages for two or three parallel chunks.
    min_size=compress.MIN_CHUNK // PAGE * 2 // SPAN,
    max_size=compress.MIN_CHUNK // PAGE * 3 // SPAN,
)


@pytest.mark.slow
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    rounds=st.lists(PAGES, min_size=1, max_size=4),
    threads=st.integers(1, 4),
    cache_pages=st.sampled_from([0, 5, 64, 100, 4096]),
    method=st.sampled_from(["zstd-1", "lz4", "raw", "zstd-1-long", "zstd-3-long"]),
)
def test_large_batches_in_parallel_parts_round_trip(
    rounds: list[list[tuple[int, int, int, int]]], threads: int, cache_pages: int, method: str
) -> None:
    """Batches big enough to be split across threads decode exactly, with identical stores.

    Indices repeat within and across batches; contents repeat (duplicates, copies, sames);
    some pages get a small patch (deltas); small caches evict in bulk.
    """
    encoder, decoder = _pair(
        {"threads": threads, "cache_mib": cache_pages * PAGE / (1 << 20), "method": method}
    )
    for pages in rounds:
        data = bytearray()
        for _, kind, seed, offset in pages:
            for step in range(SPAN):
                page = bytearray(_content(kind, seed + step))
                if (seed + step) % 3 == 0:
                    page[offset : offset + 8] = struct.pack("<Q", seed * 7919 + offset)
                data += page
        indices = [index * SPAN + step for index, *_ in pages for step in range(SPAN)]
        batch = PageBatch(indices, bytes(data), PAGE)
        out = decoder.decode(encoder.encode(batch))
        assert list(out.indices) == list(batch.indices)
        assert out.data == batch.data
        assert decoder.cache is not None
        assert encoder.cache.items() == decoder.cache.items()
        assert len(encoder.cache) <= cache_pages


def test_identical_pages_of_one_batch_go_once() -> None:
    """A page repeated in a batch (not held yet) is sent once and copied by the decoder."""
    encoder, decoder = _pair({"threads": 1})
    page = random.Random(1).randbytes(PAGE)
    batch = PageBatch([3, 9, 12], page * 3, PAGE)
    payload = encoder.encode(batch)
    assert decoder.decode(payload).data == batch.data
    assert encoder.stats().by_kind.get("copy") == 2
    assert encoder.stats().by_kind.get("full") == 1


def _raw_copy_payload() -> tuple[bytearray, int]:
    """A raw-method payload for [A, A] (ops FULL, COPY) and the offset of its copy reference."""
    encoder, _ = _pair({"threads": 1, "method": "raw"})
    page = random.Random(2).randbytes(PAGE)
    payload = bytearray(encoder.encode(PageBatch([0, 1], page * 2, PAGE)))
    header = parse_header(bytes(payload), PAGE)
    control = header.size
    assert payload[control : control + 2] == bytes([OP_FULL, OP_COPY])
    return payload, control + 2 + 8 * 2


@pytest.mark.parametrize("reference", [1, 2, 1 << 40])
def test_copy_of_itself_or_of_a_later_page_is_rejected(reference: int) -> None:
    """A copy must name an earlier page of its batch: anything else is a corrupt payload."""
    payload, at = _raw_copy_payload()
    payload[at : at + 8] = struct.pack("<Q", reference)
    decoder = DwcpCodec({"method": "raw"}).new_decoder(PAGE)
    with pytest.raises(EncodingError, match="copy refers"):
        decoder.decode(bytes(payload))


def test_store_evicts_least_recently_used_in_bulk() -> None:
    """When slots run out, the oldest untouched pages go (a sixteenth of the capacity at once)."""
    words = 4
    store = PageStore(32, words)
    table = np.arange(32 * words, dtype=np.uint64).reshape(32, words) + 1
    full = np.full(32, OP_FULL, np.uint8)
    store.update(list(range(32)), table, full, np.full(32, -1, np.int64), np.zeros(0, np.int64))
    # Pages 0..3 are used again, so 4..5 are now the oldest.
    again = list(range(4))
    store.update(again, table[:4], np.ones(4, np.uint8), store.lookup(again), np.zeros(0, np.int64))
    store.update([100], table[:1], full[:1], np.full(1, -1, np.int64), np.zeros(0, np.int64))
    assert len(store) == 32 - 2 + 1
    assert store.get(4) is None
    assert store.get(5) is None
    assert store.get(0) == table[0].tobytes()
    assert store.get(100) == table[0].tobytes()


def test_store_of_zero_capacity_holds_nothing() -> None:
    """A zero-page cache is valid: every page then goes whole or as a copy within its batch."""
    store = PageStore(0, 4)
    table = np.ones((3, 4), np.uint64)
    written, slots = store.update(
        [1, 2, 3], table, np.full(3, OP_FULL, np.uint8), np.full(3, -1, np.int64), np.zeros(0)
    )
    assert len(store) == 0
    assert written.size == slots.size == 0


def _at_prior_speeds(encoder: DwcpEncoder) -> set[str]:
    """Let ``encoder``'s selector see every compression take its method's prior time;
    returns the names of the methods it measured from then on.

    The selector weighs measured compression speeds against the link, and wall time on a
    loaded machine made the streams look slower than a neighbour (the choice then left
    them). A test of where the probes go must not depend on how busy the machine is.
    """
    measured: set[str] = set()
    observe = encoder.selector.observe

    def at_prior(method: compress.Method, raw: int, compressed: int, seconds: float | None) -> None:
        if seconds is not None:
            measured.add(method.name)
            seconds = method.seconds_per_byte_prior * raw
        observe(method, raw, compressed, seconds)

    encoder.selector.observe = at_prior  # type: ignore[method-assign]
    return measured


@pytest.mark.parametrize(("bits_per_second", "level"), [(30e6, 3), (10e6, 15), (1e6, 17)])
def test_probes_do_not_leave_the_long_window_streams(bits_per_second: float, level: int) -> None:
    """When the long-window method is the choice, probes measure others on the side; the
    last method of the list has no neighbour beyond it and measures nothing in its place."""
    encoder, decoder = _pair({"threads": 1})
    measured = _at_prior_speeds(encoder)
    encoder.set_bandwidth_hint(bits_per_second)  # bytes matter: the long window, by level
    rng = random.Random(3)
    words = [b"alpha ", b"beta ", b"gamma ", b"delta "]
    shadows = []
    for number in range(2 * compress.PROBE_EVERY):
        text = b"".join(rng.choice(words) for _ in range(PAGE * 64 // 5))[: PAGE * 64]
        batch = PageBatch(range(number * 64, number * 64 + 64), text, PAGE)
        assert decoder.decode(encoder.encode(batch)).data == batch.data
        shadows.append(encoder.selector.shadow)
    # What is measured on the side is compressed in independent frames, never as streams.
    assert all(s is None or s.kind != METHOD_ZSTD_LONG for s in shadows)
    name = f"zstd-{level}-long"
    batches = {k: v for k, v in encoder.stats().by_kind.items() if k.startswith("batches:")}
    assert batches == {f"batches:{name}": 2 * compress.PROBE_EVERY}
    probed = sorted(measured - {name})
    if compress.METHODS[-1].name == name:
        # Its other neighbour is the streams at another level, which a probe never starts.
        assert probed == []
    else:
        assert probed  # a neighbour was measured on the side
    # The streams' ratio is theirs: a probe never folds a raw copy into it.
    assert encoder.selector.long_ratio is not None
    assert encoder.selector.long_ratio < 0.25  # one raw copy folded in: above 0.35


def _long(level: int) -> compress.Method:
    return next(m for m in compress.METHODS if m.name == f"zstd-{level}-long")


def test_long_window_level_follows_the_link() -> None:
    """The slower the link, the higher the streams' level, as long as its CPU time stays
    hidden behind the link: level 1 at 400 Mbit/s, 3 at 50, 15 at 10, 17 at 1."""
    selector = compress.AdaptiveSelector()
    # Measured: zstd-1-long at 2 ns/byte, zstd-3-long at 20 ns/byte; output about 0.3 of input.
    # Levels 15 and 17 are at their priors (140 and 290 ns/byte).
    for level, seconds in ((1, 2e-3), (3, 2e-2)):
        for _ in range(40):
            selector.observe(_long(level), 1 << 20, int(0.3 * (1 << 20)), seconds * 1.048576)
    expected = {400e6: 1, 50e6: 3, 10e6: 15, 1e6: 17}
    chosen = {}
    for bandwidth in expected:
        selector.bandwidth = bandwidth
        chosen[bandwidth] = selector.choose(threads=1)
    assert chosen == {bandwidth: _long(level) for bandwidth, level in expected.items()}


def test_running_streams_keep_their_batches_near_a_tie() -> None:
    """Independent frames take a batch from the running streams only when clearly sooner."""
    selector = compress.AdaptiveSelector()
    selector.bandwidth = 10e6
    selector.streams_started(15)
    for _ in range(compress.PROBE_EVERY):  # the streams' trial, at their prior speeds
        assert selector.choose(threads=1) is _long(15)
    # zstd-12 frames: 0.9 x 0.2 of the input, 1.44e-7 s/byte of link time, the quickest frames.
    selector.base_ratio, selector.long_ratio = 0.2, 0.1
    selector.seconds_per_byte["zstd-15-long"] = 1.6e-7  # 1.11x zstd-12's time: streams stay
    assert selector.choose(threads=1) is _long(15)
    selector.seconds_per_byte["zstd-15-long"] = 2.0e-7  # 1.39x: the batch goes in frames
    assert selector.choose(threads=1).name == "zstd-12"


def test_first_batch_of_new_streams_does_not_measure_their_speed() -> None:
    """Setting up the window and tables is not compression speed: the first batch's time of
    new streams is left out, later batches are measured."""
    encoder, decoder = _pair({"threads": 1, "method": "zstd-15-long"})
    prior = encoder.selector.seconds_per_byte["zstd-15-long"]
    rng = random.Random(4)
    for number in range(2):
        batch = PageBatch(range(number * 64, number * 64 + 64), rng.randbytes(PAGE * 64), PAGE)
        assert decoder.decode(encoder.encode(batch)).data == batch.data
        measured = encoder.selector.seconds_per_byte["zstd-15-long"]
        assert (measured == prior) == (number == 0)
    assert encoder.selector.long_ratio is not None


def test_running_streams_are_replaced_only_when_worth_their_history() -> None:
    """Streams that compress well keep their level; another level starts without history."""
    selector = compress.AdaptiveSelector()
    selector.bandwidth = 1e6
    selector.streams_started(1)
    for _ in range(20):  # the level-1 streams ship a twentieth of what they get
        selector.observe(_long(1), 1 << 20, (1 << 20) // 20, 1e-3)
    assert selector.choose(threads=1) is _long(1)
    # The same streams without that measurement: the smallest output's level wins.
    selector.streams_started(1)
    assert selector.choose(threads=1) is _long(17)


def test_streams_restart_at_another_level_in_lock_step() -> None:
    """A level change restarts the streams (flagged); the decoder follows, and refuses
    a stream payload that continues streams it never saw."""
    encoder, decoder = _pair({"threads": 1})
    rng = random.Random(5)
    pages = [rng.randbytes(PAGE // 2) * 2 for _ in range(32)]
    flags = []
    for number, level in enumerate((1, 1, 3, 3, 1)):
        encoder.forced = _long(level)
        content = b"".join(pages[number:] + pages[:number])
        batch = PageBatch(range(number, number + 32), content, PAGE)
        payload = encoder.encode(batch)
        header = parse_header(payload, PAGE)
        flags.append(header.flags)
        assert header.level == level
        assert decoder.decode(payload).data == batch.data
    assert flags == [FLAG_NEW_STREAMS, 0, FLAG_NEW_STREAMS, 0, FLAG_NEW_STREAMS]
    encoder, decoder = _pair({"threads": 1, "method": "zstd-1"})
    decoder.decode(encoder.encode(PageBatch([0], pages[1], PAGE)))
    encoder.forced = _long(1)
    unflagged = bytearray(encoder.encode(PageBatch([1], pages[0], PAGE)))
    unflagged[7] = 0
    with pytest.raises(EncodingError, match="never saw"):
        decoder.decode(bytes(unflagged))
