"""DWCP chain: fixes from the encoding review (batch hash, long-window failures, settings)."""

from __future__ import annotations

import dataclasses
import os
import random
import struct

import numpy as np
import pytest
import zstandard

from novacron_dwcp.encoding import integrity, wire
from novacron_dwcp.encoding.chain import DwcpCodec
from novacron_dwcp.encoding.wire import HEADER, Header, parse_header
from novacron_sdk.encoding.interface import PageBatch
from novacron_sdk.errors import DesyncError, EncodingError

PAGE = 4096


def _seal(payload: bytes, batch: PageBatch) -> bytes:
    """``payload`` with its batch hash recomputed, as a forger would (the hash is not keyed).

    Against the version-2 code (no batch hash) the payload is returned as it is: its checksum
    covered the pages only, which a forged header or lane does not change.
    """
    batch_hash = getattr(integrity, "batch_hash", None)
    if batch_hash is None:
        return payload
    table = np.frombuffer(batch.data, np.uint64).reshape(len(batch.indices), -1)
    value = batch_hash(wire.hashed_spans(payload), integrity.fingerprints(table))
    at = wire.CHECKSUM_AT
    return payload[:at] + struct.pack("<Q", value) + payload[at + 8 :]


def _decode_or_error(codec: DwcpCodec, payload: bytes) -> PageBatch | None:
    try:
        return codec.new_decoder(PAGE).decode(payload)
    except EncodingError:  # DesyncError included
        return None


# 1. The batch checksum missed corruptions and did not cover page indices.


@pytest.mark.parametrize("method", ["raw", "zstd-1", "lz4"])
def test_top_bit_flip_in_a_page_with_a_copy_is_detected(method: str) -> None:
    """Page 11 travels as a copy of page 10: bit 63 of a word of page 10 used to change the
    linear checksum by 2 * 2**63 = 0 (mod 2**64), so the flip went through."""
    page = random.Random(1).randbytes(PAGE)
    batch = PageBatch([10, 11], page + page)
    codec = DwcpCodec({"method": method, "threads": 1})
    good = codec.new_encoder(PAGE).encode(batch)
    at = good.find(page[:64]) + 7  # the top byte of word 0 of page 10 (stored literally)
    assert at > HEADER.size
    bad = bytearray(good)
    bad[at] ^= 0x80
    assert _decode_or_error(codec, bytes(bad)) is None
    assert codec.new_decoder(PAGE).decode(good).data == batch.data


def test_two_top_bit_flips_in_one_page_are_detected() -> None:
    """Two bit-63 flips in one page cancelled out in the page's weighted sum."""
    rng = random.Random(5)
    batch = PageBatch([3, 9, 12, 40], rng.randbytes(4 * PAGE))
    codec = DwcpCodec({"method": "raw", "threads": 1})
    payload = bytearray(codec.new_encoder(PAGE).encode(batch))
    literal = len(payload) - len(batch.data)
    payload[literal + 7] ^= 0x80
    payload[literal + 15] ^= 0x80
    assert _decode_or_error(codec, bytes(payload)) is None


def test_every_bit_of_the_control_section_is_covered() -> None:
    """Page indices (index deltas), operations and references: each bit flipped in turn raises
    (before, a flipped index bit returned the right bytes under another page number)."""
    page = random.Random(2).randbytes(PAGE)
    batch = PageBatch([10, 11, 500], page + page + bytes(PAGE))
    codec = DwcpCodec({"method": "raw", "threads": 1})
    good = codec.new_encoder(PAGE).encode(batch)
    header = parse_header(good, PAGE)
    silent = []
    for bit in range(header.control_compressed * 8):
        bad = bytearray(good)
        bad[header.size + bit // 8] ^= 1 << (bit % 8)
        out = _decode_or_error(codec, bytes(bad))
        if out is not None:
            silent.append((bit, list(out.indices)))
    assert silent == []


def _dirty_batches(rng: random.Random, count: int) -> list[PageBatch]:
    """Batches over 24 pages: zero, unchanged, duplicate, copy, delta and new pages."""
    memory = {i: bytes(PAGE) for i in range(24)}
    out = []
    for _ in range(count):
        indices = [rng.randrange(24) for _ in range(rng.randrange(1, 16))]
        pages: list[bytes] = []
        for index in indices:
            kind = rng.randrange(6)
            if kind == 0:
                page = bytes(PAGE)
            elif kind == 1:
                page = memory[index]
            elif kind == 2:
                page = memory[rng.randrange(24)]
            elif kind == 3 and pages:
                page = rng.choice(pages)
            elif kind == 4:
                changed = bytearray(memory[index])
                at = rng.randrange(PAGE - 8)
                changed[at : at + 8] = rng.randbytes(8)
                page = bytes(changed)
            else:
                page = rng.randbytes(PAGE // 4) * 4
            pages.append(page)
            memory[index] = page
        out.append(PageBatch(indices, b"".join(pages)))
    return out


@pytest.mark.parametrize("method", ["raw", "lz4", "zstd-1", "zstd-1-long"])
def test_mutated_payloads_raise_or_decode_exactly(method: str) -> None:
    """Fixed-seed mutations (bit flips, byte overwrites, insertions) of every payload of a
    dirty sequence: each raises or decodes to exactly the right pages and indices."""
    rng = random.Random(f"mutations-{method}")
    settings = {"method": method, "threads": 1, "cache_mib": 0.05}
    batches = _dirty_batches(rng, 5)
    encoder = DwcpCodec(settings).new_encoder(PAGE)
    payloads = [encoder.encode(batch) for batch in batches]
    wrong = []
    for native in (True, False):
        codec = DwcpCodec({**settings, "native": native})
        for k, payload in enumerate(payloads):
            for _ in range(12):
                decoder = codec.new_decoder(PAGE)
                for earlier in payloads[:k]:
                    decoder.decode(earlier)
                bad = bytearray(payload)
                kind = rng.randrange(3)
                if kind == 0:
                    for _ in range(rng.randrange(1, 4)):
                        bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
                elif kind == 1:
                    at = rng.randrange(HEADER.size, len(bad) + 1)
                    bad[at:at] = rng.randbytes(rng.randrange(1, 9))
                else:
                    at = rng.randrange(len(bad))
                    bad[at] = (bad[at] + rng.randrange(1, 256)) % 256
                try:
                    out = decoder.decode(bytes(bad))
                except EncodingError:
                    continue
                if out.data != batches[k].data or list(out.indices) != batches[k].indices:
                    wrong.append((native, k, kind))
    assert wrong == []


def test_payload_of_an_older_wire_format_is_refused_clearly() -> None:
    codec = DwcpCodec({"threads": 1})
    payload = bytearray(codec.new_encoder(PAGE).encode(PageBatch([0], os.urandom(PAGE))))
    payload[4] = 2
    with pytest.raises(EncodingError, match="version 2; this decoder reads version 3"):
        codec.new_decoder(PAGE).decode(bytes(payload))


def test_header_layout_of_version_3() -> None:
    """docs/dwcp-encoding.md, "Wire format (version 3)": 70 bytes, the hash at offset 48."""
    assert (wire.VERSION, HEADER.size, wire.CHECKSUM_AT) == (3, 70, 48)
    header = Header(3, 1, 7, b"s" * 8, b"d" * 8, PAGE, 9, 8, 2, 0x0102030405060708, 5, 4, 3, ())
    packed = header.pack()
    assert packed[48:56] == (0x0102030405060708).to_bytes(8, "little")
    assert b"".join(wire.hashed_spans(packed)) == packed[:48] + packed[56:]


# 2. A long-window payload refused after its lanes were read left the decoder usable.


def _text_batches(seed: int, count: int, pages: int = 64) -> list[PageBatch]:
    rng = random.Random(seed)
    words = [rng.randbytes(40) for _ in range(50)]
    out = []
    for n in range(count):
        data = b"".join(
            b"".join(rng.choice(words) for _ in range(PAGE // 40 + 1))[:PAGE] for _ in range(pages)
        )
        out.append(PageBatch(list(range(n * pages, (n + 1) * pages)), data))
    return out


@pytest.mark.parametrize("new_streams", [False, True])
def test_bad_control_in_a_long_window_payload_is_refused_before_the_lanes(
    new_streams: bool,
) -> None:
    """A control section that fails its checks is refused before any lane is read: the
    streams keep their history (and a new-streams payload does not replace them), so the
    right payload decodes next and the stream goes on."""
    batches = _text_batches(1, 5)
    codec = DwcpCodec({"method": "zstd-1-long", "threads": 1})
    encoder, decoder = codec.new_encoder(PAGE), codec.new_decoder(PAGE)
    first = encoder.encode(batches[0])
    if new_streams:
        good, batch = first, batches[0]
    else:
        assert decoder.decode(first).data == batches[0].data
        good, batch = encoder.encode(batches[1]), batches[1]
    header = parse_header(good, PAGE)
    control_end = header.size + header.control_compressed
    control = zstandard.ZstdDecompressor().decompress(good[header.size : control_end])
    for bad_control in (bytes([7]) + control[1:], control[:-4] + b"\xff\xff\xff\xff"):
        packed = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(bad_control)
        forged = dataclasses.replace(header, control_compressed=len(packed))
        with pytest.raises(EncodingError):
            decoder.decode(_seal(forged.pack() + packed + good[control_end:], batch))
        assert not decoder.broken
    assert decoder.decode(good).data == batch.data
    for later in batches[2:]:
        assert decoder.decode(encoder.encode(later)).data == later.data


def test_failure_after_a_lane_was_read_breaks_the_decoder() -> None:
    """Once a lane consumed part of a payload, a failure leaves the decoder refusing all."""
    batches = _text_batches(3, 3)
    codec = DwcpCodec({"method": "zstd-1-long", "threads": 1})
    encoder, decoder = codec.new_encoder(PAGE), codec.new_decoder(PAGE)
    decoder.decode(encoder.encode(batches[0]))
    good = encoder.encode(batches[1])
    bad = bytearray(good)
    bad[-3] ^= 0x10
    with pytest.raises(EncodingError):
        decoder.decode(bytes(bad))
    assert decoder.broken
    with pytest.raises(DesyncError, match="out of step"):
        decoder.decode(good)


# 3. Trailing bytes in a long-window lane were accepted and poisoned the next batch.


@pytest.mark.parametrize("extra", [b"\x00", b"\x00\x00", b"\x00" * 100, b"\x17\xa4\x02"])
@pytest.mark.parametrize("lane", [0, 1])
def test_trailing_bytes_in_a_stream_lane_are_refused(extra: bytes, lane: int) -> None:
    rng = random.Random(2)
    base = [rng.randbytes(64) * 64 for _ in range(16)]
    first = PageBatch(list(range(16)), b"".join(base))
    changed = [bytearray(page) for page in base]
    for page in changed:
        page[200:230] = rng.randbytes(30)  # deltas: lane 1 carries bytes too
    second = PageBatch(list(range(16)), b"".join(bytes(page) for page in changed))
    codec = DwcpCodec({"method": "zstd-1-long", "threads": 1})
    encoder, decoder = codec.new_encoder(PAGE), codec.new_decoder(PAGE)
    batch = first
    good = encoder.encode(first)
    if lane == 1:
        decoder.decode(good)
        batch, good = second, encoder.encode(second)
    header = parse_header(good, PAGE)
    assert header.chunks[lane][0]
    end = header.size + header.control_compressed + sum(c for _, c in header.chunks[: lane + 1])
    chunks = list(header.chunks)
    chunks[lane] = (chunks[lane][0], chunks[lane][1] + len(extra))
    forged = dataclasses.replace(header, chunks=tuple(chunks))
    bad = forged.pack() + good[header.size : end] + extra + good[end:]
    with pytest.raises(EncodingError, match="did not use all of its bytes"):
        decoder.decode(_seal(bad, batch))
    assert decoder.broken


# 4. Settings: every value checked at both ends, by name.


@pytest.mark.parametrize(
    "settings",
    [
        {"max_cache_mib": "lots"},
        {"max_cache_mib": -1},
        {"max_cache_mib": float("nan")},
        {"cache_mib": float("inf")},
        {"cache_mib": float("nan")},
        {"cache_mib": 1e30},
        {"cache_mib": True},
        {"threads": 2.5},
        {"threads": True},
        {"method": 3},
        {"native": "yes"},
    ],
)
@pytest.mark.parametrize("end", ["new_encoder", "new_decoder"])
def test_bad_setting_values_are_refused_by_name_at_both_ends(
    settings: dict[str, object], end: str
) -> None:
    name = next(iter(settings))
    with pytest.raises(EncodingError, match=name):
        getattr(DwcpCodec(settings), end)(PAGE)
