"""Send references instead of RAM pages the destination already has in a file both hosts hold.

A guest's memory holds copies of files that the destination host must have too for the
migration to start: a direct-boot kernel and initrd, base images. Their content does not
compress (a compressed kernel is most of the test guest's incompressible pages). The source
indexes those files (every 4 KiB window at 512-byte steps: a bzImage's payload sits at a
sector, not page, offset), finds QEMU's RAM page records (8-byte header with the page and
continue flags, then 4 KiB) in each chunk, and replaces each page found in a file by a
reference. Both ends name the files by SHA-256, so their paths may differ; a sink that lacks
one refuses the channel before QEMU sees a byte. A match is confirmed byte for byte at the
source, so a reference always stands for exactly the page it replaced.

Frame ``R``: u16 count, count x (u32 position in the chunk, u16 file, u64 file offset),
then an inner ``D``/``Z`` frame with the rest of the chunk.
"""

from __future__ import annotations

import hashlib
import logging
import re
import stat
import struct
import xml.etree.ElementTree as ET
from collections.abc import Collection, Sequence
from pathlib import Path

from novacron_sdk.errors import FrameError

PAGE = 4096
STEP = 512
MAX_FILE_BYTES = 256 << 20  # what the index may cover in all (it is built in memory)
REF_TAG = b"R"
_REF = struct.Struct(">IHQ")
_COUNT = struct.Struct(">H")
# A RAM page record's header: a big-endian address below 4 GiB (RAM blocks larger than that
# hold no copies of small files worth finding), 4 KiB-aligned, with the flags
# RAM_SAVE_FLAG_PAGE | RAM_SAVE_FLAG_CONTINUE (0x08 | 0x20) in its low bits.
_PAGE_HEADER = re.compile(
    rb"\x00\x00\x00\x00[\x00-\xff][\x00-\xff][\x00\x10\x20\x30\x40\x50\x60\x70"
    rb"\x80\x90\xa0\xb0\xc0\xd0\xe0\xf0]\x28",
    re.DOTALL,
)
_HEADER_BYTES = 8
_BOOT_ELEMENTS = ("os/kernel", "os/initrd")

logger = logging.getLogger(__name__)


def _key(window: bytes | memoryview) -> bytes:
    # A sample of the page, not a hash of it: every hit is confirmed byte for byte, so the
    # key only has to tell pages apart well enough to avoid needless comparisons, and three
    # 8-byte slices cost a fraction of hashing 4 KiB (the index covers every 512-byte step).
    return bytes(window[:8]) + bytes(window[2048:2056]) + bytes(window[PAGE - 8 : PAGE])


def file_digest(content: bytes) -> str:
    """The name both ends give a reference file: its SHA-256, hex."""
    return hashlib.sha256(content).hexdigest()


def reference_count(frame: bytes) -> int:
    """How many page references a frame carries (0 for any frame but ``R``)."""
    if frame[:1] != REF_TAG or len(frame) < 1 + _COUNT.size:
        return 0
    return int(_COUNT.unpack_from(frame, 1)[0])


def boot_files(xml: str) -> list[Path]:
    """The direct-boot kernel and initrd of a domain's XML that exist here (may be none).

    These are the default reference files of a stream migration: the destination QEMU opens
    the same paths (from the destination XML) when it starts, so a destination that can run
    the guest holds them; the sink still names its copies by SHA-256 and the source refers
    only to files whose digest the sink announced. Files that are not world-readable are left
    out (the XML comes from the source host), and so are files over the index's size limit in
    total (with a log line) rather than failing the migration.
    """
    try:
        root = ET.fromstring(xml)  # noqa: S314 - XML produced by a libvirt daemon
    except ET.ParseError:
        return []
    found: list[Path] = []
    for element in _BOOT_ELEMENTS:
        text = (root.findtext(element) or "").strip()
        if not text or not Path(text).is_file():
            continue
        # The sink reads these paths from an XML the source sent, with the agent's rights, and
        # may put their pages into the guest: only files any user of this host may read.
        if not Path(text).stat().st_mode & stat.S_IROTH:
            logger.info("boot file %s is not world-readable: no page references to it", text)
            continue
        found.append(Path(text))
    total = sum(path.stat().st_size for path in found)
    if total > MAX_FILE_BYTES:
        logger.info("boot files hold %d bytes, over %d: no page references", total, MAX_FILE_BYTES)
        return []
    return found


def shared_files(files: Sequence[Path], digests: Collection[str]) -> list[Path]:
    """Those of ``files`` whose SHA-256 is among ``digests`` (what the sink holds)."""
    if not digests:
        return []
    shared: list[Path] = []
    for path in files:
        digest = hashlib.sha256()
        with Path(path).open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
        if digest.hexdigest() in digests:
            shared.append(Path(path))
    return shared


def _read_all(files: Sequence[Path]) -> list[bytes]:
    contents = [Path(f).read_bytes() for f in files]
    total = sum(len(c) for c in contents)
    if total > MAX_FILE_BYTES:
        msg = f"reference files hold {total} bytes; the limit is {MAX_FILE_BYTES}"
        raise ValueError(msg)
    return contents


class ReferenceIndex:
    """The source's index of the reference files' windows."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.contents = _read_all(files)
        self.digests = [file_digest(c) for c in self.contents]
        self._index: dict[bytes, tuple[int, int]] = {}
        for number, content in enumerate(self.contents):
            view = memoryview(content)
            for offset in range(0, len(content) - PAGE + 1, STEP):
                self._index.setdefault(_key(view[offset : offset + PAGE]), (number, offset))

    def find(self, chunk: bytes) -> list[tuple[int, int, int]]:
        """(position in ``chunk``, file, offset) of every whole page record found in a file.

        Records follow each other: when another header sits right after a page, the walk
        goes on from there; the search for a header pattern only restarts when it does not.
        """
        found: list[tuple[int, int, int]] = []
        view = memoryview(chunk)
        match = _PAGE_HEADER.search(chunk)
        while match is not None:
            start = match.end()  # the page follows its header
            if start + PAGE > len(chunk):
                break
            page = view[start : start + PAGE]
            hit = self._index.get(_key(page))
            if hit is not None and self.contents[hit[0]][hit[1] : hit[1] + PAGE] == page:
                found.append((start, *hit))  # (a hash collision fails the comparison)
            following = _PAGE_HEADER.match(chunk, start + PAGE)
            if following is None and (not found or found[-1][0] != start):
                following = _PAGE_HEADER.search(chunk, match.start() + 1)
            elif following is None:
                following = _PAGE_HEADER.search(chunk, start + PAGE)
            match = following
        return found

    def strip(self, chunk: bytes, found: list[tuple[int, int, int]]) -> tuple[bytes, bytes]:
        """The ``R`` frame's reference header for ``found``, and ``chunk`` without them."""
        header = _COUNT.pack(len(found)) + b"".join(_REF.pack(*ref) for ref in found)
        rest = bytearray()
        last = 0
        for start, _number, _offset in found:
            rest += chunk[last:start]
            last = start + PAGE
        rest += chunk[last:]
        return header, bytes(rest)


class ReferenceStore:
    """The sink's reference files, by digest, to put the referenced pages back."""

    def __init__(self, by_digest: dict[str, bytes], contents: Sequence[bytes] = ()) -> None:
        self._by_digest = by_digest
        self.contents = list(contents)

    @classmethod
    def from_files(cls, files: Sequence[Path]) -> ReferenceStore:
        """Read ``files`` (this host's copies, any paths) and name them by digest."""
        return cls({file_digest(c): c for c in _read_all(files)})

    @property
    def digests(self) -> list[str]:
        """The SHA-256 of every file held, the names a source may refer to."""
        return sorted(self._by_digest)

    def select(self, digests: Sequence[str]) -> ReferenceStore:
        """The files the source named, in its order; FrameError when one is missing."""
        missing = [d for d in digests if d not in self._by_digest]
        if missing:
            msg = (
                f"the source refers to files this host lacks (SHA-256 {', '.join(missing)}); "
                "give the sink the same reference files, or none to the source"
            )
            raise FrameError(msg)
        return ReferenceStore(self._by_digest, [self._by_digest[d] for d in digests])

    def split(self, body: bytes) -> tuple[list[tuple[int, int, int]], bytes]:
        """The references of an ``R`` frame's body and its inner frame; FrameError if bad."""
        if len(body) < _COUNT.size:
            msg = "truncated page-reference frame"
            raise FrameError(msg)
        (count,) = _COUNT.unpack_from(body)
        inner_at = _COUNT.size + count * _REF.size
        if len(body) < inner_at:
            msg = "truncated page-reference frame"
            raise FrameError(msg)
        refs = [_REF.unpack_from(body, _COUNT.size + n * _REF.size) for n in range(count)]
        return refs, body[inner_at:]

    def rebuild(self, refs: list[tuple[int, int, int]], rest: bytes, limit: int) -> bytes:
        """``rest`` with the referenced pages put back; FrameError if out of bounds."""
        if len(rest) + len(refs) * PAGE > limit:
            msg = f"page-reference frame expands past {limit} bytes"
            raise FrameError(msg)
        out = bytearray()
        taken = 0
        for start, number, offset in refs:
            gap = start - len(out)
            if gap < 0 or number >= len(self.contents) or taken + gap > len(rest):
                msg = "page-reference frame with references out of order or range"
                raise FrameError(msg)
            content = self.contents[number]
            if offset + PAGE > len(content):
                msg = "page reference past the end of its file"
                raise FrameError(msg)
            out += rest[taken : taken + gap]
            taken += gap
            out += content[offset : offset + PAGE]
        out += rest[taken:]
        return bytes(out)
