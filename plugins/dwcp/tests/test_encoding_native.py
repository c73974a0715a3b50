"""The chain's native hot paths: in use when built, same results as numpy, hostile input."""

from __future__ import annotations

import os
import random
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from novacron_dwcp.encoding import native
from novacron_dwcp.encoding.cache import IndexedPageStore
from novacron_dwcp.encoding.chain import DwcpCodec, DwcpDecoder, DwcpEncoder
from novacron_dwcp.encoding.classify import classify
from novacron_dwcp.encoding.integrity import fingerprints, weights
from novacron_sdk.encoding.interface import MAX_BATCH_PAGES, PageBatch
from novacron_sdk.errors import EncodingError

needs_native = pytest.mark.skipif(
    not native.AVAILABLE and os.environ.get("NOVACRON_REQUIRE_NATIVE") != "1",
    reason="the native extension was not built (no C compiler at install time)",
)


@needs_native
def test_native_path_is_in_use_when_built() -> None:
    """An installed extension is used by default (NOVACRON_REQUIRE_NATIVE=1: it must exist)."""
    assert native.AVAILABLE, "novacron_dwcp.encoding._native is missing: reinstall the plugin"
    encoder = DwcpCodec().new_encoder(4096)
    assert isinstance(encoder, DwcpEncoder)
    assert encoder.native is True
    assert DwcpCodec({"native": False}).new_encoder(4096).native is False  # type: ignore[attr-defined]
    decoder = DwcpCodec().new_decoder(4096)
    assert isinstance(decoder, DwcpDecoder)
    assert decoder.native is True
    assert DwcpCodec({"native": False}).new_decoder(4096).native is False  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", ["yes", 1.5, None])
def test_bad_native_setting_is_rejected(value: object) -> None:
    """Only True/False are accepted, and True only when the extension exists."""
    with pytest.raises(EncodingError, match="native"):
        DwcpCodec({"native": value}).new_encoder(4096)
    with pytest.raises(EncodingError, match="native"):
        DwcpCodec({"native": value}).new_decoder(4096)


def _page(kind: int, seed: int, size: int) -> bytes:
    """Page content from a small alphabet: zero, duplicates, sparse edits and rewrites."""
    rng = random.Random(seed % 5)
    base = rng.randbytes(size)
    if kind == 0:
        return bytes(size)
    if kind == 1:
        return base
    if kind == 2:  # sparse change of a shared base: a delta or a near-duplicate
        edit = bytearray(base)
        for at in range(seed % 3 + 1):
            edit[(seed * 97 + at * 401) % size] ^= 0xFF
        return bytes(edit)
    return rng.randbytes(size // 2) + bytes(size // 2)


ROUND = st.lists(
    st.tuples(st.integers(0, 120), st.integers(0, 3), st.integers(0, 30)), min_size=1, max_size=200
)


@needs_native
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rounds=st.lists(ROUND, min_size=1, max_size=5),
    threads=st.integers(1, 3),
    cache_pages=st.sampled_from([0, 3, 40, 1000]),
    method=st.sampled_from(["zstd-1", "raw", "lz4", "zstd-1-long"]),
    page_size=st.sampled_from([512, 4096]),
)
def test_native_and_numpy_payloads_are_identical_and_round_trip(
    rounds: list[list[tuple[int, int, int]]],
    threads: int,
    cache_pages: int,
    method: str,
    page_size: int,
) -> None:
    """Both paths give the same bytes for random dirty sequences; both decoders rebuild them."""
    common = {"threads": threads, "cache_mib": cache_pages * page_size / (1 << 20)}
    fast = DwcpCodec({**common, "method": method, "native": True}).new_encoder(page_size)
    slow = DwcpCodec({**common, "method": method, "native": False}).new_encoder(page_size)
    assert isinstance(fast, DwcpEncoder)
    assert isinstance(slow, DwcpEncoder)
    slow.stream_id = fast.stream_id
    decoder = DwcpCodec({"native": True}).new_decoder(page_size)
    fallback = DwcpCodec({"native": False}).new_decoder(page_size)
    for pages in rounds:
        indices = [index for index, _, _ in pages]
        data = b"".join(_page(kind, seed, page_size) for _, kind, seed in pages)
        batch = PageBatch(indices, data, page_size)
        payload = fast.encode(batch)
        assert payload == slow.encode(batch)
        assert decoder.decode(payload).data == data
        assert fallback.decode(payload).data == data


def _store(pages: int, words: int) -> IndexedPageStore:
    store = IndexedPageStore(pages, words)
    table = np.arange(pages * words, dtype=np.uint64).reshape(pages, words) + 1
    indices = list(range(pages))
    ops = np.full(pages, 4, np.uint8)
    _, slots = store.update(indices, table, ops, np.full(pages, -1, np.int64), np.zeros(0))
    store.index(slots, np.arange(pages, dtype=np.uint64) + 7)
    return store


@needs_native
def test_native_classify_matches_numpy_on_one_part() -> None:
    """The same operations, references and run tables as classify.classify."""
    words = 64
    store = _store(8, words)
    table = store.slab[:8].copy()
    table[1, 3] ^= 1  # a delta
    table[2] = 0  # a zero page
    table[3] = table[5]  # a duplicate of a held page
    table[6] = np.arange(words, dtype=np.uint64) * 3  # rewritten: goes whole
    slots = store.lookup(list(range(8)))
    found, pieces = native.classify_batch(table, slots, store, native.Scratch())
    expected = classify(table, slots, store)
    for name in ("ops", "refs", "fingerprints", "sources", "full_rows", "run_counts", "offsets"):
        assert np.array_equal(getattr(found, name), getattr(expected, name)), name
    assert bytes(pieces[1]) == expected.delta_words.tobytes()


@needs_native
@pytest.mark.parametrize(
    "change",
    [
        "short table",
        "start past stop",
        "stop past the table",
        "short slots",
        "odd slab",
        "short literal buffer",
    ],
)
def test_native_classify_rejects_inconsistent_arrays(change: str) -> None:
    """Sizes that do not agree raise ValueError before anything is read or allocated."""
    words = 64
    store = _store(4, words)
    table = np.ones((4, words), np.uint64)
    slots = np.full(4, -1, np.int64)
    start, stop, slab = 0, 4, store.slab
    if change == "short table":
        table = np.ones(4 * words - 1, np.uint64)
    elif change == "start past stop":
        start = 3
        stop = 2
    elif change == "stop past the table":
        stop = 5
    elif change == "short slots":
        slots = slots[:3].copy()
    elif change == "odd slab":
        slab = np.ones(words * 3 + 1, np.uint64)
    word_weights, _ = weights(words, MAX_BATCH_PAGES)
    full = np.empty(4 * words * 8, np.uint8)
    delta = np.empty(4 * words * 8 - (change == "short literal buffer"), np.uint8)
    with pytest.raises(ValueError, match="inconsistent"):
        native._native.classify(
            table, start, stop, slots, slab, store.fingerprint, store.owner,
            store.by_fingerprint, word_weights, full, delta,
        )  # fmt: skip


@needs_native
def test_native_classify_survives_hostile_slots_and_index() -> None:
    """Slots and index entries out of range count as misses; no crash, bounded allocation."""
    words = 512
    store = _store(16, words)
    rows = 1024
    table = np.tile(store.slab[:16], (rows // 16, 1))
    slots = np.array([2**62, -(2**62), 10**9, -5] * (rows // 4), np.int64)
    real = fingerprints(table[:16]).tolist()
    store.by_fingerprint.update(dict.fromkeys(real, 2**40))
    tracemalloc.start()
    try:
        found, pieces = native.classify_batch(table, slots, store, native.Scratch())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    batch_bytes = rows * words * 8
    # Outputs are bounded by the batch: the two literal buffers (of the batch's size; reused
    # from batch to batch) and run tables of at most a quarter of it.
    assert peak < 2.3 * batch_bytes, peak / batch_bytes
    assert set(found.ops.tolist()) <= {4, 5}  # whole pages, or copies within the part
    assert len(pieces[0]) + len(pieces[1]) <= batch_bytes
    store.by_fingerprint[real[0]] = "not a slot"  # type: ignore[assignment]
    with pytest.raises(TypeError):
        native.classify_batch(table, slots, store, native.Scratch())


def _rebuild_arguments(change: str) -> dict[str, object]:
    """A consistent rebuild of four 64-byte pages (same, delta, duplicate, copy), then one
    ``change`` that makes it inconsistent."""
    size = 64
    slab = np.arange(3 * size, dtype=np.uint8).reshape(3, size)
    args: dict[str, object] = {
        "ops": np.array([1, 3, 2, 5, 4], np.uint8),
        "slots": np.array([0, 1, -1, -1, -1], np.int64),
        "sources": np.array([2], np.int64),
        "copies": (np.array([3], np.int64), np.array([0], np.int64)),
        "runs": (np.array([1], np.int64), np.array([8], np.int64), np.array([4], np.int64)),
        "literal": bytes(range(100, 100 + size)) + b"WXYZ",
        "slab": slab,
        "page_size": size,
    }
    copy_rows, _ = args["copies"]  # type: ignore[misc]
    run_counts, offsets, lengths = args["runs"]  # type: ignore[misc]
    if change == "unknown operation":
        args["ops"] = np.array([1, 3, 2, 5, 9], np.uint8)
    elif change == "slot past the slab":
        args["slots"] = np.array([3, 1, -1, -1, -1], np.int64)
    elif change == "negative delta slot":
        args["slots"] = np.array([0, -1, -1, -1, -1], np.int64)
    elif change == "short slots":
        args["slots"] = np.array([0, 1], np.int64)
    elif change == "duplicate slot past the slab":
        args["sources"] = np.array([2**40], np.int64)
    elif change == "missing duplicate source":
        args["sources"] = np.zeros(0, np.int64)
    elif change == "extra duplicate source":
        args["sources"] = np.array([2, 2], np.int64)
    elif change == "copy of a later page":
        args["copies"] = (copy_rows, np.array([4], np.int64))
    elif change == "copy of itself":
        args["copies"] = (copy_rows, np.array([3], np.int64))
    elif change == "copy row that is not a copy":
        args["copies"] = (np.array([4], np.int64), np.array([0], np.int64))
    elif change == "run past the page":
        args["runs"] = (run_counts, np.array([62], np.int64), lengths)
    elif change == "negative run":
        args["runs"] = (run_counts, np.array([-8], np.int64), lengths)
    elif change == "empty run":
        args["runs"] = (run_counts, offsets, np.array([0], np.int64))
    elif change == "more runs than given":
        args["runs"] = (np.array([2], np.int64), offsets, lengths)
    elif change == "runs left over":
        args["runs"] = (run_counts, np.array([8, 16], np.int64), np.array([4, 4], np.int64))
    elif change == "short literal":
        args["literal"] = bytes(size)
    elif change == "long literal":
        args["literal"] = bytes(size + 5)
    elif change == "odd slab":
        args["slab"] = np.zeros(3 * size + 1, np.uint8)
    elif change == "odd page size":
        args["page_size"] = 63
    return args


@needs_native
def test_native_rebuild_writes_every_kind_of_page() -> None:
    """Same, delta, duplicate, copy and whole pages land where the plan says."""
    pages = native.rebuild(**_rebuild_arguments("none"))  # type: ignore[arg-type]
    slab = np.arange(3 * 64, dtype=np.uint8).reshape(3, 64)
    delta = bytearray(slab[1].tobytes())
    delta[8:12] = b"WXYZ"
    expected = [slab[0].tobytes(), bytes(delta), slab[2].tobytes(), slab[0].tobytes()]
    expected.append(bytes(range(100, 164)))
    assert pages == b"".join(expected)


@needs_native
@pytest.mark.parametrize(
    "change",
    [
        "unknown operation", "slot past the slab", "negative delta slot", "short slots",
        "duplicate slot past the slab", "missing duplicate source", "extra duplicate source",
        "copy of a later page", "copy of itself", "copy row that is not a copy",
        "run past the page", "negative run", "empty run", "more runs than given",
        "runs left over", "short literal", "long literal", "odd slab", "odd page size",
    ],
)  # fmt: skip
def test_native_rebuild_rejects_inconsistent_plans(change: str) -> None:
    """Every count, slot and run is checked in C too: a clear error, nothing out of bounds."""
    with pytest.raises(EncodingError, match="payload corrupt: native rebuild"):
        native.rebuild(**_rebuild_arguments(change))  # type: ignore[arg-type]
