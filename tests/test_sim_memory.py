"""GuestMemory: geometry, page access, digests, dirty tracking, fills, images and recording."""

from __future__ import annotations

import errno
import mmap
import threading
import zlib

import pytest
import xxhash

from novacron_sdk.builtin.sim.memory import GuestMemory, page_digest_of
from novacron_sdk.builtin.sim.workloads import load_trace
from novacron_sdk.errors import DriverError, QuotaExceededError

PAGE = 4096
MIB = 1024 * 1024


@pytest.fixture
def memory():
    mem = GuestMemory(64 * MIB)
    yield mem
    mem.close()


def page_of(value: int) -> bytes:
    return bytes([value]) * PAGE


@pytest.mark.parametrize("size", [0, 100, PAGE + 1, -PAGE])
def test_geometry_is_validated(size):
    with pytest.raises(DriverError, match="multiple of the page size"):
        GuestMemory(size)


def test_memory_the_machine_cannot_map_is_a_quota_error():
    # 1 EiB is beyond any x86-64/arm64 address space, whatever the overcommit policy.
    with pytest.raises(QuotaExceededError, match=r"cannot allocate 1099511627776 MiB") as caught:
        GuestMemory(1 << 60)
    assert "use a smaller memory_mib" in str(caught.value)
    assert isinstance(caught.value.__cause__, OSError | MemoryError | OverflowError)


@pytest.mark.parametrize(
    "failure",
    [OSError(errno.ENOMEM, "Cannot allocate memory"), MemoryError(), OverflowError("too big")],
)
def test_every_refused_allocation_says_how_much_and_what_to_do(monkeypatch, failure):
    def refuse(fileno: int, length: int) -> mmap.mmap:
        raise failure

    monkeypatch.setattr(mmap, "mmap", refuse)
    with pytest.raises(QuotaExceededError, match=r"cannot allocate 100 MiB .*") as caught:
        GuestMemory(100 * MIB)
    text = str(caught.value)
    assert type(failure).__name__ in text
    assert "use a smaller memory_mib" in text
    assert caught.value.__cause__ is failure


def test_geometry(memory):
    assert memory.page_count == 64 * MIB // PAGE
    assert memory.size_bytes == 64 * MIB
    small = GuestMemory(PAGE)
    try:
        assert small.page_count == 1
    finally:
        small.close()


def test_write_then_read_pages_in_requested_order(memory):
    memory.write_pages([5, 2, 9], page_of(5) + page_of(2) + page_of(9))
    assert memory.read_pages([9, 5, 2]) == page_of(9) + page_of(5) + page_of(2)
    memory.write_page(0, page_of(7))
    assert memory.read_pages([0]) == page_of(7)
    assert memory.read_pages([1]) == bytes(PAGE)


def test_bad_writes_and_reads_are_rejected(memory):
    with pytest.raises(DriverError, match="needs 8192 bytes"):
        memory.write_pages([1, 2], page_of(1))
    with pytest.raises(DriverError, match="out of range"):
        memory.write_page(memory.page_count, page_of(1))
    with pytest.raises(DriverError, match="out of range"):
        memory.read_pages([-1])
    assert memory.read_pages([memory.page_count - 1]) == bytes(PAGE)


def test_page_digests_match_content(memory):
    memory.write_pages([3, 4], page_of(3) + page_of(3))
    expected = xxhash.xxh3_128_digest(page_of(3))
    assert memory.page_digest(3) == expected
    assert memory.page_digests([3, 4, 5]) == [expected, expected, page_digest_of(bytes(PAGE))]


def test_whole_memory_digest_follows_content():
    first, second = GuestMemory(4 * MIB), GuestMemory(4 * MIB)
    try:
        assert first.digest() == second.digest()
        first.write_page(first.page_count - 1, page_of(1))
        assert first.digest() != second.digest()
        second.write_page(second.page_count - 1, page_of(1))
        assert first.digest() == second.digest()
    finally:
        first.close()
        second.close()


def test_dirty_tracking_rounds(memory):
    with pytest.raises(DriverError, match="start_tracking"):
        memory.collect_dirty()
    memory.write_page(1, page_of(1))
    memory.start_tracking()
    assert memory.collect_dirty() == list(range(memory.page_count))
    assert memory.collect_dirty() == []
    memory.write_pages([40, 3, 40, 7], page_of(1) * 4)
    assert memory.collect_dirty() == [3, 7, 40]
    assert memory.collect_dirty() == []
    memory.stop_tracking()
    memory.write_page(9, page_of(9))
    with pytest.raises(DriverError):
        memory.collect_dirty()


def test_tracking_copes_with_a_512_mib_vm():
    big = GuestMemory(512 * MIB)
    try:
        big.start_tracking()
        assert len(big.collect_dirty()) == 131072
        pages = list(range(0, 131072, 6))
        big.write_pages(pages, bytes(PAGE * len(pages)))
        assert big.collect_dirty() == pages
    finally:
        big.close()


def test_concurrent_writers_never_tear_a_page(memory):
    stop = threading.Event()

    def writer():
        value = 0
        while not stop.is_set():
            value = (value + 1) % 251
            memory.write_pages(range(64), page_of(value) * 64)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(300):
            data = memory.read_pages(range(64))
            assert data == data[:1] * len(data), "a read saw a half-written batch"
    finally:
        stop.set()
        thread.join()


def test_zero_fill_clears_memory(memory):
    memory.write_page(10, page_of(9))
    memory.fill("zero")
    assert memory.read_pages([10]) == bytes(PAGE)
    with pytest.raises(DriverError, match="unknown memory fill"):
        memory.fill("random")


def test_mixed_fill_is_deterministic_and_realistic(memory):
    memory.fill("mixed", seed=5)
    other = GuestMemory(64 * MIB)
    try:
        other.fill("mixed", seed=5)
        assert other.digest() == memory.digest()
        other.fill("mixed", seed=6)
        assert other.digest() != memory.digest()
    finally:
        other.close()
    digests = memory.page_digests(range(memory.page_count))
    zero = page_digest_of(bytes(PAGE))
    zero_share = digests.count(zero) / len(digests)
    assert 0.3 < zero_share < 0.5
    non_zero = [d for d in digests if d != zero]
    assert len(set(non_zero)) < len(non_zero), "expected some duplicate pages"
    sample = memory.read_pages(i for i, d in enumerate(digests[:4096]) if d != zero)
    ratio = len(zlib.compress(sample)) / len(sample)
    assert 0.02 < ratio < 0.9, f"non-zero pages should be semi-compressible, ratio {ratio}"


def test_load_image_shorter_file_leaves_zero_tail(memory, tmp_path):
    memory.write_page(memory.page_count - 1, page_of(4))
    image = tmp_path / "guest.img"
    content = bytes(range(256)) * 40  # 10240 bytes: two and a half pages
    image.write_bytes(content)
    memory.load_image(image)
    assert memory.read_pages([0, 1, 2]) == content + bytes(3 * PAGE - len(content))
    assert memory.read_pages([memory.page_count - 1]) == bytes(PAGE)


def test_load_image_too_big_names_both_sizes(tmp_path):
    small = GuestMemory(4 * PAGE)
    image = tmp_path / "big.raw"
    image.write_bytes(bytes(5 * PAGE))
    try:
        with pytest.raises(DriverError, match=f"{5 * PAGE} bytes.*{4 * PAGE} bytes"):
            small.load_image(image)
        with pytest.raises(DriverError, match="cannot read memory image"):
            small.load_image(tmp_path / "missing.raw")
    finally:
        small.close()


def test_recording_writes_a_replayable_trace(memory, tmp_path):
    trace = tmp_path / "writes.trace"
    memory.write_page(1, page_of(1))
    memory.start_recording(trace)
    memory.write_pages([7, 3], page_of(1) * 2)
    memory.write_page(7, page_of(2))
    memory.stop_recording()
    memory.write_page(8, page_of(2))
    times, pages = load_trace(trace, memory.page_count)
    assert pages == [7, 3, 7]
    assert times == sorted(times)


def test_closed_memory_refuses_access():
    mem = GuestMemory(PAGE * 4)
    mem.close()
    mem.close()
    assert mem.closed
    with pytest.raises(DriverError, match="released"):
        mem.read_pages([0])
    with pytest.raises(DriverError, match="released"):
        mem.digest()
