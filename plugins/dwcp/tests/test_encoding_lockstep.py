"""DWCP chain: desynchronised decoders are detected and malformed payloads are bounded."""

from __future__ import annotations

import random
import struct
import tracemalloc

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from novacron_dwcp.encoding.chain import DwcpCodec, DwcpDecoder, DwcpEncoder
from novacron_dwcp.encoding.wire import CHUNK_ENTRY, HEADER, METHOD_ZSTD, Header, parse_header
from novacron_sdk.encoding.interface import PageBatch
from novacron_sdk.errors import DesyncError, EncodingError

PAGE = 4096


def _pair(method: str | None = None) -> tuple[DwcpEncoder, DwcpDecoder]:
    codec = DwcpCodec({"method": method} if method else None)
    return codec.new_encoder(PAGE), codec.new_decoder(PAGE)


def _batches(count: int, seed: int) -> list[PageBatch]:
    """Batches over the same 32 pages that change a little each time (deltas and sames)."""
    rng = random.Random(seed)
    memory = [bytearray(rng.randbytes(PAGE)) for _ in range(32)]
    out = []
    for _ in range(count):
        for page in rng.sample(memory, 8):
            offset = rng.randrange(PAGE - 8)
            page[offset : offset + 8] = rng.randbytes(8)
        out.append(PageBatch(list(range(32)), b"".join(bytes(p) for p in memory)))
    return out


def test_decoder_of_another_stream_raises_desync() -> None:
    """Payloads of a second encoder are refused by a decoder that follows the first."""
    first, decoder = _pair()
    second, _ = _pair()
    batches = _batches(2, seed=1)
    decoder.decode(first.encode(batches[0]))
    second.encode(batches[0])
    with pytest.raises(DesyncError, match="another encoder"):
        decoder.decode(second.encode(batches[1]))


def test_decoder_joining_mid_stream_raises_desync() -> None:
    """A fresh decoder given batch 1 first knows it missed batch 0."""
    encoder, _ = _pair()
    payloads = [encoder.encode(b) for b in _batches(2, seed=2)]
    with pytest.raises(DesyncError, match="not 0"):
        DwcpCodec().new_decoder(PAGE).decode(payloads[1])


def test_diverged_cache_content_is_detected() -> None:
    """If the decoder's cached page differs from the encoder's, decoding stops with DesyncError."""
    encoder, decoder = _pair()
    batches = _batches(3, seed=3)
    decoder.decode(encoder.encode(batches[0]))
    assert decoder.cache is not None
    slot = next(iter(decoder.cache.slot_of.values()))
    decoder.cache.slab[slot, 0] ^= 1
    second = encoder.encode(batches[1])
    with pytest.raises(DesyncError, match="checksum"):
        decoder.decode(second)
    # Nothing was stored: the next payload is refused as out of sequence, and the same payload
    # again fails the same check (the cache still differs), never returning pages.
    with pytest.raises(DesyncError, match="expected batch 1, got batch 2"):
        decoder.decode(encoder.encode(batches[2]))
    with pytest.raises(DesyncError, match="checksum"):
        decoder.decode(second)


def test_diverged_cache_membership_is_detected() -> None:
    """A decoder that lost a cached page is detected before it rebuilds anything."""
    encoder, decoder = _pair()
    batches = _batches(2, seed=4)
    decoder.decode(encoder.encode(batches[0]))
    assert decoder.cache is not None
    decoder.cache.drop([next(iter(decoder.cache.slot_of))])
    with pytest.raises(DesyncError, match="state differ"):
        decoder.decode(encoder.encode(batches[1]))


def test_tampered_state_digest_is_detected() -> None:
    """The rolling digest of control data binds each payload to the whole history."""
    encoder, decoder = _pair()
    batches = _batches(2, seed=5)
    decoder.decode(encoder.encode(batches[0]))
    payload = bytearray(encoder.encode(batches[1]))
    state_at = struct.calcsize("<4sBBbBQ8s")
    payload[state_at] ^= 0xFF
    with pytest.raises(DesyncError):
        decoder.decode(bytes(payload))


def _rewrite(payload: bytes, **changes: object) -> bytes:
    header = parse_header(payload, PAGE)
    fields = {**header.__dict__, **changes}
    body = payload[header.size :]
    return Header(**fields).pack() + body  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [
        {"page_count": 10**6},
        {"literal_raw": 2**31},
        {"control_raw": 2**31},
        {"page_size": 8192},
        {"method": 9},
    ],
)
def test_oversized_declarations_are_rejected_before_allocation(changes: dict[str, int]) -> None:
    """Declared sizes beyond the batch bound fail fast and allocate next to nothing."""
    encoder, decoder = _pair()
    payload = _rewrite(encoder.encode(_batches(1, seed=6)[0]), **changes)
    tracemalloc.start()
    try:
        with pytest.raises(EncodingError):
            decoder.decode(payload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_zstd_frame_claiming_a_huge_size_is_rejected() -> None:
    """A chunk whose zstd frame declares more than the header allows is not decompressed."""
    encoder, decoder = _pair()
    payload = encoder.encode(PageBatch([0], bytes(PAGE)))
    header = parse_header(payload, PAGE)
    bomb = zstandard.ZstdCompressor(level=1).compress(bytes(64 << 20))
    forged = Header(**{**header.__dict__, "method": METHOD_ZSTD, "literal_raw": PAGE,
                       "chunks": ((PAGE, len(bomb)),)})  # fmt: skip
    control = payload[header.size : header.size + header.control_compressed]
    tracemalloc.start()
    try:
        with pytest.raises(EncodingError, match="declares"):
            decoder.decode(forged.pack() + control + bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_header_constants_match_the_documented_layout() -> None:
    """The fixed header is 70 bytes and each chunk entry 8 (docs/dwcp-encoding.md)."""
    assert (HEADER.size, CHUNK_ENTRY.size) == (70, 8)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), method=st.sampled_from(["zstd-1", "zstd-1-long", "lz4", "raw"]))
def test_mutated_payloads_raise_encoding_errors_only(data: st.DataObject, method: str) -> None:
    """Random byte flips, cuts and insertions raise EncodingError (or decode); nothing else."""
    encoder, decoder = _pair(method)
    batches = _batches(2, seed=7)
    decoder.decode(encoder.encode(batches[0]))
    payload = bytearray(encoder.encode(batches[1]))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(payload) - 1))
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            payload[position] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del payload[position : position + data.draw(st.integers(1, 64))]
        else:
            payload[position:position] = data.draw(st.binary(min_size=1, max_size=16))
        if not payload:
            payload = bytearray(b"\0")
    try:
        out = decoder.decode(bytes(payload))
    except EncodingError:
        return
    assert len(out.data) == len(out.indices) * PAGE


@pytest.mark.parametrize("method", ["zstd-1", "lz4", "raw"])
def test_rejected_payload_leaves_the_decoder_usable(method: str) -> None:
    """A payload refused before it changed any state can be followed by the right one."""
    encoder, decoder = _pair(method)
    batches = _batches(3, seed=8)
    # A corrupt first payload must not bind the decoder to a stream either.
    first = encoder.encode(batches[0])
    with pytest.raises(EncodingError):
        decoder.decode(first[:-3])
    decoder.decode(first)
    second = encoder.encode(batches[1])
    with pytest.raises(EncodingError):
        decoder.decode(second[: len(second) // 2])
    assert decoder.decode(second).data == batches[1].data


def test_bad_payload_in_a_long_window_stream_stops_the_decoder() -> None:
    """Once a stream lane has consumed part of a bad payload, nothing else is decoded."""
    encoder, decoder = _pair("zstd-1-long")
    batches = _batches(2, seed=9)
    decoder.decode(encoder.encode(batches[0]))
    payload = bytearray(encoder.encode(batches[1]))
    payload[-5] ^= 0x55
    with pytest.raises(EncodingError):
        decoder.decode(bytes(payload))
    with pytest.raises(DesyncError, match="out of step"):
        decoder.decode(encoder.encode(batches[0]))


@pytest.mark.parametrize("method", ["zstd-1", "zstd-3", "lz4"])
def test_a_flipped_bit_in_any_section_never_decodes_to_other_pages(method: str) -> None:
    """zstd frames carry no checksum of their own: the header's batch checksum over every
    rebuilt page must catch whatever a corrupt control or literal section decodes to. Every
    byte after the header, flipped in turn: an EncodingError, or exactly the right pages; after
    an error the same decoder still takes the right payload."""
    rng = random.Random(21)
    words = [b"migrate ", b"page ", b"delta ", b"stream ", b"window ", b"%d " % 7]
    text = b"".join(rng.choice(words) for _ in range(48 * PAGE // 2))[: 48 * PAGE]
    pages = [bytearray(text[i * PAGE : (i + 1) * PAGE]) for i in range(48)]
    first = PageBatch(list(range(48)), b"".join(bytes(p) for p in pages))
    for page in pages[::3]:
        page[100:140] = (rng.choice(words) * 40)[:40]  # deltas against the held versions
    second = PageBatch(list(range(48)), b"".join(bytes(p) for p in pages))
    encoder = DwcpCodec({"method": method, "threads": 1}).new_encoder(PAGE)
    payload0 = encoder.encode(first)
    payload1 = encoder.encode(second)
    header = parse_header(payload1, PAGE)
    assert header.control_compressed  # both sections are in play
    assert header.literal_raw
    start = len(payload1) - header.control_compressed - sum(size for _, size in header.chunks)
    silent = []
    for position in range(start, len(payload1)):
        decoder = DwcpCodec({"method": method}).new_decoder(PAGE)
        decoder.decode(payload0)
        mutated = bytearray(payload1)
        mutated[position] ^= 1 << (position % 8)
        try:
            out = decoder.decode(bytes(mutated))
        except EncodingError:
            assert decoder.decode(payload1).data == second.data
            continue
        if out.data != second.data or list(out.indices) != list(second.indices):
            silent.append(position)
    assert silent == []
