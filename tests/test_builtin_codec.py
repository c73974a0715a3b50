"""The builtin codecs: the contract suite, plus the zlib-specific attacks and accounting."""

from __future__ import annotations

import struct
import tracemalloc
import zlib

import pytest

from novacron_sdk.builtin.zlib_codec import RawCodec, ZeroZlibCodec
from novacron_sdk.encoding.interface import MAX_BATCH_PAGES, PageBatch, PageCodec
from novacron_sdk.errors import DesyncError, EncodingError
from novacron_sdk.plugin.manager import build_plugin_manager
from novacron_sdk.testing.codec import CodecContract, make_batch

HEADER = struct.Struct("!4sBBBBQII")


class TestZlibContract(CodecContract):
    @pytest.fixture
    def codec(self) -> PageCodec:
        return ZeroZlibCodec()


class TestZlibLevel9SmallPagesContract(CodecContract):
    @pytest.fixture
    def codec(self) -> PageCodec:
        return ZeroZlibCodec({"level": 9})

    @pytest.fixture
    def page_size(self) -> int:
        return 512


class TestRawContract(CodecContract):
    @pytest.fixture
    def codec(self) -> PageCodec:
        return RawCodec()


def zlib_payload(
    seq: int, count: int, bitmap: bytes, body: bytes, *, page_size: int = 4096
) -> bytes:
    header = HEADER.pack(b"NCPB", 1, 1, 0, 0, seq, count, page_size)
    indices = struct.pack(f"!{count}I", *range(count))
    return header + indices + bitmap + body


def test_zero_pages_cost_one_bit() -> None:
    encoder = ZeroZlibCodec().new_encoder()
    batch = PageBatch(list(range(1024)), bytes(1024 * 4096))
    payload = encoder.encode(batch)
    # header + 4-byte indices + a 128-byte bitmap, and no compressed body at all
    assert len(payload) == HEADER.size + 4 * 1024 + 128
    assert encoder.stats().by_kind == {"zero": 1024}
    assert ZeroZlibCodec().new_decoder().decode(payload) == batch


def test_by_kind_counts_zero_and_compressed() -> None:
    encoder = ZeroZlibCodec().new_encoder()
    pages = [(i, i % 4, i) for i in range(40)]  # every fourth page is zero
    encoder.encode(make_batch(pages, 4096))
    assert encoder.stats().by_kind == {"zero": 10, "compressed": 30}
    raw = RawCodec().new_encoder()
    raw.encode(make_batch(pages, 4096))
    assert raw.stats().by_kind == {"raw": 40}


def test_compresses_repetitive_pages() -> None:
    encoder = ZeroZlibCodec().new_encoder()
    encoder.encode(make_batch([(i, 1, 7) for i in range(64)], 4096))
    assert encoder.stats().ratio < 0.05


def test_zlib_bomb_is_capped_at_the_declared_size() -> None:
    # Declares one non-zero page (4 KiB) but carries 64 MiB of zeros, compressed ~1000:1.
    bomb = zlib.compressobj(9)
    body = b"".join(bomb.compress(bytes(1 << 20)) for _ in range(64)) + bomb.flush()
    payload = zlib_payload(0, 1, b"\x00", body)
    tracemalloc.start()
    try:
        with pytest.raises(EncodingError, match="inflate past"):
            ZeroZlibCodec().new_decoder().decode(payload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024


def test_compressed_body_shorter_than_declared() -> None:
    payload = zlib_payload(0, 2, b"\x00", zlib.compress(bytes(4096) + b"\x01"))
    with pytest.raises(EncodingError, match="expected 8192"):
        ZeroZlibCodec().new_decoder().decode(payload)


def test_stray_bytes_after_the_compressed_body() -> None:
    payload = zlib_payload(0, 1, b"\x00", zlib.compress(b"\x01" * 4096) + b"junk")
    with pytest.raises(EncodingError, match="stray"):
        ZeroZlibCodec().new_decoder().decode(payload)


def test_corrupt_compressed_body() -> None:
    payload = zlib_payload(0, 1, b"\x00", b"\x78\x9c" + bytes(30))
    with pytest.raises(EncodingError, match="zlib"):
        ZeroZlibCodec().new_decoder().decode(payload)


def test_bitmap_bits_past_the_last_page() -> None:
    payload = zlib_payload(0, 3, b"\xff", b"")
    with pytest.raises(EncodingError, match="bitmap"):
        ZeroZlibCodec().new_decoder().decode(payload)


def test_page_count_over_the_limit_is_rejected_before_reading() -> None:
    payload = HEADER.pack(b"NCPB", 1, 1, 0, 0, 0, MAX_BATCH_PAGES + 1, 4096)
    with pytest.raises(EncodingError, match="MAX_BATCH_PAGES"):
        ZeroZlibCodec().new_decoder().decode(payload)
    with pytest.raises(EncodingError, match="MAX_BATCH_PAGES"):
        ZeroZlibCodec().new_encoder(512).encode(
            PageBatch([0] * (MAX_BATCH_PAGES + 1), bytes(512 * (MAX_BATCH_PAGES + 1)), 512)
        )


def test_wrong_codec_and_page_size_are_named() -> None:
    raw_payload = RawCodec().new_encoder().encode(make_batch([(1, 2, 3)], 4096))
    with pytest.raises(EncodingError, match="'raw' codec"):
        ZeroZlibCodec().new_decoder().decode(raw_payload)
    with pytest.raises(EncodingError, match="expects 8192"):
        RawCodec().new_decoder(8192).decode(raw_payload)


def test_desync_message_says_skipped_or_repeated() -> None:
    encoder, decoder = ZeroZlibCodec().new_encoder(), ZeroZlibCodec().new_decoder()
    payloads = [encoder.encode(make_batch([(i, 2, i)], 4096)) for i in range(3)]
    with pytest.raises(DesyncError, match="skipped payload: got batch 1, expected 0"):
        decoder.decode(payloads[1])
    decoder.decode(payloads[0])
    with pytest.raises(DesyncError, match="repeated payload: got batch 0, expected 1"):
        decoder.decode(payloads[0])


def test_wide_indices_round_trip() -> None:
    codec = ZeroZlibCodec()
    batch = make_batch([(2**40, 2, 1), (3, 0, 0), (2**63, 3, 2)], 4096)
    assert codec.new_decoder().decode(codec.new_encoder().encode(batch)) == batch


@pytest.mark.parametrize("bad", [{"level": 10}, {"level": "fast"}, {"level": True}])
def test_bad_level_setting(bad: dict[str, object]) -> None:
    with pytest.raises(EncodingError, match="level"):
        ZeroZlibCodec(bad)


def test_encoder_rejects_other_page_size() -> None:
    with pytest.raises(EncodingError, match="made for 4096"):
        ZeroZlibCodec().new_encoder(4096).encode(PageBatch([1], bytes(512), 512))


def test_registered_names() -> None:
    codecs = build_plugin_manager(autoload=False).codecs
    assert codecs.get("zlib") is ZeroZlibCodec
    assert codecs.get("raw") is RawCodec
