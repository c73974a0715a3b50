"""Page references: RAM pages found in files both hosts hold go as references, and come back.

Streams here are shaped like QEMU's RAM section (8-byte page headers with the page and
continue flags, then 4 KiB); some pages are copies of a reference file at sector (not page)
offsets, like a bzImage's payload in guest memory. Hostile reference frames are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from novacron_libvirt import pagerefs
from novacron_libvirt.bridge import StreamBridgeSink, StreamBridgeSource
from novacron_libvirt.pagerefs import (
    PAGE,
    ReferenceIndex,
    ReferenceStore,
    boot_files,
    file_digest,
    reference_count,
    shared_files,
)
from novacron_libvirt.streamcodec import MAX_CHUNK_BYTES, ChunkDecoder, compress_chunk
from novacron_sdk.builtin.tcp_transport import TcpTransport
from novacron_sdk.errors import FrameError
from novacron_sdk.transport.interface import Endpoint

PAGE_AND_CONTINUE = 0x28


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short directory for the reference files and unix sockets."""
    with tempfile.TemporaryDirectory(prefix="ncr-") as path:
        yield Path(path)


def ram_records(kernel: bytes, pages: int) -> tuple[bytes, int]:
    """A RAM section: every other page a copy of ``kernel`` at a 512-byte offset; the count."""
    out = bytearray(b"QEVM-like preamble")
    copies = 0
    for n in range(pages):
        out += struct.pack(">Q", (n << 12) | PAGE_AND_CONTINUE)
        if n % 2 == 0:
            offset = 512 * (3 + 9 * n) % (len(kernel) - PAGE)
            offset -= offset % 512
            out += kernel[offset : offset + PAGE]
            copies += 1
        else:
            out += os.urandom(PAGE)
    return bytes(out), copies


def test_pages_found_in_a_reference_file_go_as_references(workdir: Path) -> None:
    kernel = os.urandom(256 * 1024)
    (workdir / "vmlinuz").write_bytes(kernel)
    index = ReferenceIndex([workdir / "vmlinuz"])
    chunk, copies = ram_records(kernel, 40)
    found = index.find(chunk)
    assert len(found) == copies
    frame, _seconds = compress_chunk({}, chunk, 1, index)
    assert frame[:1] == b"R"
    assert len(frame) < len(chunk) - copies * (PAGE - 16)
    # The destination's copy may live elsewhere: it is found by content.
    (workdir / "elsewhere").mkdir()
    (workdir / "elsewhere" / "kernel-copy").write_bytes(kernel)
    store = ReferenceStore.from_files([workdir / "elsewhere" / "kernel-copy"])
    decoder = ChunkDecoder("zstd", store.select(index.digests))
    assert decoder.decode(frame) == chunk


def test_a_sink_without_the_file_refuses_and_bad_references_are_refused(workdir: Path) -> None:
    kernel = os.urandom(64 * 1024)
    (workdir / "vmlinuz").write_bytes(kernel)
    (workdir / "other").write_bytes(os.urandom(64 * 1024))
    index = ReferenceIndex([workdir / "vmlinuz"])
    with pytest.raises(FrameError, match="lacks"):
        ReferenceStore.from_files([workdir / "other"]).select(index.digests)
    store = ReferenceStore.from_files([workdir / "vmlinuz"]).select(index.digests)
    decoder = ChunkDecoder("zstd", store)

    def reference_frame(refs: list[tuple[int, int, int]], rest: bytes) -> bytes:
        header = struct.pack(">H", len(refs))
        header += b"".join(struct.pack(">IHQ", *ref) for ref in refs)
        return b"R" + header + b"D" + rest

    assert decoder.decode(reference_frame([(4, 0, 512)], b"abcdefgh")) == (
        b"abcd" + kernel[512 : 512 + PAGE] + b"efgh"
    )
    hostile = [
        reference_frame([(0, 1, 0)], b""),  # no file 1
        reference_frame([(0, 0, len(kernel))], b""),  # past the end of the file
        reference_frame([(9, 0, 0)], b"abc"),  # a gap the rest cannot fill
        reference_frame([(0, 0, 0)] * (MAX_CHUNK_BYTES // PAGE + 1), b""),  # expands too far
        b"R\x00\x05\x00",  # truncated
        reference_frame([(0, 0, 0)], b"")[:-1] + b"R" + reference_frame([], b""),  # nested
    ]
    for frame in hostile:
        with pytest.raises(FrameError):
            decoder.decode(frame)
    with pytest.raises(FrameError, match="unexpected frame"):
        ChunkDecoder("zstd").decode(reference_frame([], b"x"))


async def test_the_bridge_carries_references_end_to_end(workdir: Path) -> None:
    kernel = os.urandom(128 * 1024)
    (workdir / "src-kernel").write_bytes(kernel)
    (workdir / "dst-kernel").write_bytes(kernel)
    stream, _copies = ram_records(kernel, 300)
    received: list[bytes] = []
    done = asyncio.Event()

    async def fake_destination_qemu(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        received.append(await reader.read())
        writer.close()
        done.set()

    incoming = workdir / "dst.sock"
    server = await asyncio.start_unix_server(fake_destination_qemu, path=str(incoming))
    sink = StreamBridgeSink(
        TcpTransport(), Endpoint(), incoming, "r", reference_files=[workdir / "dst-kernel"]
    )
    await sink.start()
    source = StreamBridgeSource(
        TcpTransport(),
        sink.endpoint,
        workdir / "src.sock",
        "r",
        codec="zstd",
        reference_files=[workdir / "src-kernel"],
    )
    writers: list[asyncio.StreamWriter] = []
    try:
        await source.start()
        reader, writer = await asyncio.open_unix_connection(str(workdir / "src.sock"))
        writers.append(writer)
        writer.write(stream)
        writer.write_eof()
        await asyncio.wait_for(done.wait(), timeout=20)
        await reader.read()
    finally:
        # Also when the test failed half way: a leaked socket would be reported as a
        # ResourceWarning in whichever test runs next.
        for writer in writers:
            writer.close()
        try:
            await source.close()
        finally:
            try:
                await sink.close()
            finally:
                server.close()
                await server.wait_closed()
                for writer in writers:
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
    assert received == [stream]
    # Half the pages are random and go as they are; the other half as references.
    assert source.stats.frame_bytes_to_destination < 0.6 * len(stream)
    assert not source.errors
    assert not sink.errors


def domain_xml(kernel: str | None, initrd: str | None) -> str:
    """A domain XML with the given direct-boot paths (None leaves the element out)."""
    os_items = "<type arch='x86_64'>hvm</type>"
    if kernel is not None:
        os_items += f"<kernel>{kernel}</kernel>"
    if initrd is not None:
        os_items += f"<initrd>{initrd}</initrd>"
    return f"<domain type='qemu'><name>g</name><os>{os_items}</os></domain>"


def test_boot_files_are_the_direct_boot_kernel_and_initrd_that_exist(workdir: Path) -> None:
    (workdir / "vmlinuz").write_bytes(b"k" * 5000)
    (workdir / "initrd").write_bytes(b"i" * 3000)
    both = domain_xml(str(workdir / "vmlinuz"), str(workdir / "initrd"))
    assert boot_files(both) == [workdir / "vmlinuz", workdir / "initrd"]
    # A guest booting from disk has none; a path missing here is left out; junk is no XML.
    assert boot_files(domain_xml(None, None)) == []
    assert boot_files(domain_xml(str(workdir / "vmlinuz"), str(workdir / "gone"))) == [
        workdir / "vmlinuz"
    ]
    assert boot_files("<domain") == []


def test_boot_files_that_are_not_world_readable_are_left_out(workdir: Path) -> None:
    # The XML comes from the source host: a path to a private file of this host (say
    # /etc/shadow) must not have its pages served into the guest.
    (workdir / "vmlinuz").write_bytes(b"k" * 5000)
    (workdir / "secret").write_bytes(b"s" * 5000)
    (workdir / "secret").chmod(0o640)
    xml = domain_xml(str(workdir / "vmlinuz"), str(workdir / "secret"))
    assert boot_files(xml) == [workdir / "vmlinuz"]


def test_boot_files_over_the_index_limit_are_left_out(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (workdir / "vmlinuz").write_bytes(b"k" * 5000)
    monkeypatch.setattr(pagerefs, "MAX_FILE_BYTES", 4096)
    assert boot_files(domain_xml(str(workdir / "vmlinuz"), None)) == []


def test_the_source_refers_only_to_files_the_sink_announced(workdir: Path) -> None:
    kernel, initrd = os.urandom(64 * 1024), os.urandom(32 * 1024)
    (workdir / "vmlinuz").write_bytes(kernel)
    (workdir / "initrd").write_bytes(initrd)
    files = [workdir / "vmlinuz", workdir / "initrd"]
    store = ReferenceStore.from_files([workdir / "initrd"])
    assert store.digests == [file_digest(initrd)]
    assert shared_files(files, set(store.digests)) == [workdir / "initrd"]
    assert shared_files(files, set()) == []
    # A file the sink holds with other content (another kernel build) is not referred to.
    assert shared_files(files, {file_digest(b"another kernel")}) == []


def test_reference_count_reads_the_frame_header(workdir: Path) -> None:
    kernel = os.urandom(128 * 1024)
    (workdir / "vmlinuz").write_bytes(kernel)
    chunk, copies = ram_records(kernel, 20)
    frame, _seconds = compress_chunk({}, chunk, 1, ReferenceIndex([workdir / "vmlinuz"]))
    assert copies > 0
    assert reference_count(frame) == copies
    plain, _seconds = compress_chunk({}, chunk, 1, None)
    assert reference_count(plain) == 0
    assert reference_count(b"R") == 0
