"""Reference files: pages both ends hold in files travel as references, and only then."""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from novacron_dwcp.encoding.chain import DwcpCodec, DwcpDecoder, DwcpEncoder
from novacron_dwcp.encoding.references import REFERENCE_BASE
from novacron_sdk.encoding.interface import PageBatch
from novacron_sdk.errors import DesyncError, EncodingError
from novacron_sdk.testing.codec import CodecContract

PAGE = 4096


def _noise(pages: int, seed: int) -> bytes:
    """Incompressible pages: only a reference can make them small."""
    return random.Random(seed).randbytes(pages * PAGE)


@pytest.fixture
def kernel(tmp_path: Path) -> Path:
    """A 'kernel' file of 40 distinct pages plus a ragged tail (the last page is padded)."""
    path = tmp_path / "vmlinuz"
    path.write_bytes(_noise(40, 1) + b"tail" * 100)
    return path


def _pair(settings_: dict[str, object]) -> tuple[DwcpEncoder, DwcpDecoder]:
    codec = DwcpCodec(settings_)
    return codec.new_encoder(PAGE), codec.new_decoder(PAGE)


class TestDwcpContractWithReferences(CodecContract):
    """The codec contract holds with reference files preloaded on both ends."""

    @pytest.fixture
    def codec(self, tmp_path: Path) -> DwcpCodec:
        path = tmp_path / "reference.bin"
        path.write_bytes(_noise(8, 7))
        return DwcpCodec({"reference_files": [str(path)]})


def test_pages_of_the_files_travel_as_references(kernel: Path) -> None:
    content = kernel.read_bytes()
    # Guest memory: file pages at other addresses, the padded tail page, and noise.
    memory = content[5 * PAGE : 25 * PAGE] + content[40 * PAGE :].ljust(PAGE, b"\0") + _noise(4, 9)
    batch = PageBatch(list(range(100, 125)), memory)
    plain_encoder, plain_decoder = _pair({})
    encoder, decoder = _pair({"reference_files": [kernel]})
    assert encoder.reference_pages == 41
    plain, referenced = plain_encoder.encode(batch), encoder.encode(batch)
    assert decoder.decode(referenced).data == memory
    assert plain_decoder.decode(plain).data == memory
    assert encoder.stats().by_kind.get("duplicate") == 21
    # 21 incompressible pages became 8-byte references.
    assert len(referenced) < len(plain) - 20 * PAGE


def test_reference_pages_can_be_sent_again_as_guest_pages(kernel: Path) -> None:
    """A guest page that was a reference's copy, then changed, then equal to it again."""
    content = kernel.read_bytes()
    encoder, decoder = _pair({"reference_files": [kernel]})
    first = content[:PAGE]
    for data in (first, _noise(1, 3), first, bytes(PAGE), first):
        batch = PageBatch([7], data)
        assert decoder.decode(encoder.encode(batch)).data == data


def test_a_decoder_given_other_files_stops_at_the_first_batch(kernel: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.write_bytes(kernel.read_bytes()[:-1] + b"X")
    batch = PageBatch([0], kernel.read_bytes()[:PAGE])
    for decoder_settings in ({"reference_files": [other]}, {}):
        encoder = DwcpCodec({"reference_files": [kernel]}).new_encoder(PAGE)
        decoder = DwcpCodec(decoder_settings).new_decoder(PAGE)
        with pytest.raises(DesyncError, match="same reference_files"):
            decoder.decode(encoder.encode(batch))
    # Files in another order are other files too: their pages would have other numbers.
    encoder = DwcpCodec({"reference_files": [kernel, other]}).new_encoder(PAGE)
    decoder = DwcpCodec({"reference_files": [other, kernel]}).new_decoder(PAGE)
    with pytest.raises(DesyncError, match="same reference_files"):
        decoder.decode(encoder.encode(batch))


@pytest.mark.parametrize(
    "value", ["/boot/vmlinuz", [3], {"a": 1}, ["/nonexistent/novacron-reference-file"]]
)
def test_bad_reference_settings_are_rejected(value: object) -> None:
    with pytest.raises(EncodingError, match=r"reference_files|reference file"):
        DwcpCodec({"reference_files": value}).new_encoder(PAGE)


def test_reference_files_may_fill_at_most_half_the_cache(kernel: Path) -> None:
    # 41 pages of files; a 64-page cache takes 32 of them.
    with pytest.raises(EncodingError, match="cache_mib"):
        DwcpCodec({"reference_files": [kernel], "cache_mib": 64 * PAGE / (1 << 20)}).new_encoder(
            PAGE
        )


def test_batches_cannot_use_the_reference_index_range(kernel: Path) -> None:
    encoder, _ = _pair({"reference_files": [kernel]})
    with pytest.raises(EncodingError, match=r"2\*\*62"):
        encoder.encode(PageBatch([REFERENCE_BASE], bytes(PAGE)))


def test_zero_and_repeated_file_pages_are_held_once(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    page = _noise(1, 4)
    path.write_bytes(page + bytes(3 * PAGE) + page + _noise(1, 5))
    encoder, decoder = _pair({"reference_files": [path]})
    assert encoder.reference_pages == 2
    batch = PageBatch([0, 1], page + _noise(1, 5))
    assert decoder.decode(encoder.encode(batch)).data == batch.data
    assert encoder.stats().by_kind.get("duplicate") == 2


def _choice(file_pages: list[bytes], choice: int) -> bytes:
    """A file page (0-39), a zero page (40) or a page of noise."""
    if choice < len(file_pages):
        return file_pages[choice]
    return bytes(PAGE) if choice == len(file_pages) else _noise(1, choice)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rounds=st.lists(
        st.lists(st.tuples(st.integers(0, 30), st.integers(0, 60)), min_size=1, max_size=24),
        min_size=1,
        max_size=6,
    ),
    cache_pages=st.sampled_from([96, 128, 4096]),
)
def test_random_rounds_with_references_round_trip(
    rounds: list[list[tuple[int, int]]], cache_pages: int
) -> None:
    """Guest pages drawn from file pages, noise and zeros, under eviction: always identical."""
    file_pages = [_noise(1, 1000 + n) for n in range(40)]
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "reference.bin"
        path.write_bytes(b"".join(file_pages))
        encoder, decoder = _pair(
            {"reference_files": [path], "cache_mib": cache_pages * PAGE / (1 << 20)}
        )
        for round_ in rounds:
            indices = [index for index, _ in round_]
            pages = [_choice(file_pages, choice) for _, choice in round_]
            batch = PageBatch(indices, b"".join(pages))
            assert decoder.decode(encoder.encode(batch)).data == batch.data
        held = decoder.cache
        assert held is not None
        assert sorted(held.slot_of) == sorted(encoder.cache.slot_of)
        assert np.array_equal(
            held.slab[[held.slot_of[i] for i in sorted(held.slot_of)]],
            encoder.cache.slab[[encoder.cache.slot_of[i] for i in sorted(held.slot_of)]],
        )


def test_the_example_runs_and_references_shrink_the_copy() -> None:
    example = Path(__file__).resolve().parents[3] / "examples" / "dwcp_encoding.py"
    result = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    ratio = float(result.stdout.rsplit("with reference files / plain): ", 1)[1].split("x")[0])
    # Half the sample memory is a copy of the incompressible reference file.
    assert ratio < 0.2, result.stdout
    assert "'duplicate': 1024" in result.stdout


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["absent.img"], "cannot read absent.img: No such file or directory"),
        (["tiny.img"], "less than one 4096-byte page"),
        (["page.img", "absent-kernel"], "reference file absent-kernel cannot be read"),
    ],
)
def test_the_example_reports_unusable_input_without_a_traceback(
    tmp_path: Path, argv: list[str], fragment: str
) -> None:
    example = Path(__file__).resolve().parents[3] / "examples" / "dwcp_encoding.py"
    (tmp_path / "tiny.img").write_bytes(b"x" * 100)
    (tmp_path / "page.img").write_bytes(bytes(4096))
    result = subprocess.run(
        [sys.executable, str(example), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ")
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr
