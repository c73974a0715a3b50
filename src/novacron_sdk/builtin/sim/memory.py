"""Guest memory of a simulated VM: real bytes in an anonymous mmap, with per-page dirty tracking.

Workload threads write pages while the event loop reads, hashes and tracks them, so every
access goes through one lock held only for the duration of a slice copy.
"""

from __future__ import annotations

import hashlib
import mmap
import random
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Literal

from novacron_sdk.errors import DriverError, QuotaExceededError
from novacron_sdk.hypervisors.interface import PAGE_SIZE
from novacron_sdk.migration.digests import page_digest

FillKind = Literal["zero", "mixed"]
"""The memory fills ``GuestMemory.fill`` knows."""

_MIB = 1024 * 1024
_CHUNK_BYTES = 16 * _MIB
_FILL_BATCH_PAGES = 1024
_TEMPLATE_COUNT = 32
_DUPLICATE_COUNT = 4
_STAMP = struct.Struct("<QQ")
TRACE_HEADER = "# novacron-sim dirty-page trace v1: one write per line, 't_seconds page_index'"

# fmt: off
_WORDS = [
    "kernel", "scheduler", "page", "fault", "irq", "vmexit", "balloon", "hugepage", "cgroup",
    "inode", "dentry", "socket", "epoll", "futex", "mutex", "GET", "POST", "200", "404",
    "user_id", "session", "token", "cache", "hit", "miss", "compaction", "journal", "commit",
    "rollback", "tuple", "index", "btree", "wal", "checkpoint", "select", "insert", "update",
]
# fmt: on


def page_digest_of(data: bytes | memoryview) -> bytes:
    """The per-page content digest (the SDK's convention, ``novacron_sdk.migration.digests``)."""
    return page_digest(data)


def text_page(rng: random.Random, page_size: int) -> bytes:
    """A page of log-like text: compressible, but not trivially so."""
    words: list[str] = []
    length = 0
    line = 0
    while length < page_size:
        word = rng.choice(_WORDS) if rng.random() < 0.8 else f"{rng.randrange(1 << 20):x}"
        if rng.random() < 0.08:
            line += 1
            word = f"\n{line:06d} {word}"
        words.append(word)
        length += len(word) + 1
    return " ".join(words).encode()[:page_size].ljust(page_size, b" ")


def structured_page(rng: random.Random, page_size: int) -> bytes:
    """A page of fixed-size records with slowly increasing fields, like an array of structs."""
    base = rng.randrange(1 << 32)
    step = rng.randrange(1, 64)
    count = page_size // 8
    values = [base + step * i + (i % 7) for i in range(count)]
    return struct.pack(f"<{count}Q", *values)[:page_size].ljust(page_size, b"\0")


def _allocate(size_bytes: int) -> mmap.mmap:
    """An anonymous mapping of ``size_bytes``; QuotaExceededError if this machine refuses it."""
    try:
        return mmap.mmap(-1, size_bytes)
    except (OSError, MemoryError, OverflowError) as exc:
        # The host's own capacity check passed, but the machine (RAM, overcommit policy,
        # ulimit -v) cannot back that much memory: a capacity problem, not a bug.
        size = f"{size_bytes // _MIB} MiB" if size_bytes % _MIB == 0 else f"{size_bytes} bytes"
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        msg = (
            f"this machine cannot allocate {size} of simulated guest memory ({reason}): "
            "use a smaller memory_mib, or free memory on this machine"
        )
        raise QuotaExceededError(msg) from exc


class GuestMemory:
    """``size_bytes`` of guest memory in fixed-size pages, thread-safe, with dirty tracking.

    ``read_pages`` and the digests are consistent snapshots of the pages they cover; a
    caller that needs a snapshot of the whole memory pauses the writers first.
    """

    def __init__(self, size_bytes: int, page_size: int = PAGE_SIZE) -> None:
        if page_size <= 0 or size_bytes < page_size or size_bytes % page_size:
            msg = (
                f"guest memory of {size_bytes} bytes is invalid: it must be a positive multiple "
                f"of the page size ({page_size} bytes)"
            )
            raise DriverError(msg)
        self.size_bytes = size_bytes
        self.page_size = page_size
        self.page_count = size_bytes // page_size
        self._mm = _allocate(size_bytes)
        self._view = memoryview(self._mm)
        self._lock = threading.Lock()
        self._closed = False
        self._tracking = False
        self._all_dirty = False
        self._dirty: set[int] = set()
        self._recorder: IO[str] | None = None
        self._record_start = 0.0

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once :meth:`close` released the mapping."""
        return self._closed

    def close(self) -> None:
        """Release the mapping (and stop recording). Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close_recorder()
            self._view.release()
            self._mm.close()

    def _check_open(self) -> None:
        if self._closed:
            msg = "this guest memory was released (the VM was destroyed or migrated away)"
            raise DriverError(msg)

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.page_count:
            msg = f"page index {index} is out of range: this memory has {self.page_count} pages"
            raise DriverError(msg)

    # -- page access -----------------------------------------------------------------------
    def write_page(self, index: int, data: bytes | memoryview) -> None:
        """Overwrite page ``index`` with ``data`` (exactly one page)."""
        self.write_pages((index,), data)

    def write_pages(self, indices: Sequence[int], data: bytes | memoryview) -> None:
        """Overwrite ``indices`` with consecutive pages of ``data`` (``len(indices)`` pages)."""
        size = self.page_size
        if len(data) != len(indices) * size:
            msg = (
                f"write of {len(indices)} pages needs {len(indices) * size} bytes, got {len(data)}"
            )
            raise DriverError(msg)
        source = memoryview(data)
        with self._lock:
            self._check_open()
            for index in indices:
                self._check_index(index)
            view = self._view
            for n, index in enumerate(indices):
                view[index * size : (index + 1) * size] = source[n * size : (n + 1) * size]
            if self._tracking and not self._all_dirty:
                self._dirty.update(indices)
            if self._recorder is not None:
                stamp = f"{time.monotonic() - self._record_start:.6f}"
                self._recorder.writelines(f"{stamp} {index}\n" for index in indices)

    def read_pages(self, indices: Iterable[int]) -> bytes:
        """The current content of ``indices``, concatenated."""
        size = self.page_size
        with self._lock:
            self._check_open()
            view = self._view
            parts = []
            for index in indices:
                self._check_index(index)
                parts.append(view[index * size : (index + 1) * size])
            return b"".join(parts)

    def page_digest(self, index: int) -> bytes:
        """The digest of page ``index`` (see :func:`page_digest_of`)."""
        return self.page_digests((index,))[0]

    def page_digests(self, indices: Iterable[int]) -> list[bytes]:
        """Digests of ``indices``, in order."""
        size = self.page_size
        with self._lock:
            self._check_open()
            out = []
            for index in indices:
                self._check_index(index)
                out.append(page_digest_of(self._view[index * size : (index + 1) * size]))
            return out

    def digest(self) -> str:
        """A hex BLAKE2b digest of the whole memory, for end-to-end verification."""
        hasher = hashlib.blake2b(digest_size=32)
        with self._lock:
            self._check_open()
            for offset in range(0, self.size_bytes, _CHUNK_BYTES):
                hasher.update(self._view[offset : offset + _CHUNK_BYTES])
        return hasher.hexdigest()

    # -- dirty tracking --------------------------------------------------------------------
    def start_tracking(self) -> None:
        """Start dirty tracking; every page counts as dirty until the first collection."""
        with self._lock:
            self._tracking = True
            self._all_dirty = True
            self._dirty = set()

    def collect_dirty(self) -> list[int]:
        """Sorted indices of pages written since the previous collection, and reset."""
        with self._lock:
            if not self._tracking:
                msg = "dirty tracking is off: call start_tracking() first"
                raise DriverError(msg)
            if self._all_dirty:
                self._all_dirty = False
                self._dirty = set()
                return list(range(self.page_count))
            dirty, self._dirty = self._dirty, set()
        return sorted(dirty)

    def stop_tracking(self) -> None:
        """Stop dirty tracking and forget what was collected."""
        with self._lock:
            self._tracking = False
            self._all_dirty = False
            self._dirty = set()

    @property
    def tracking(self) -> bool:
        """Whether dirty tracking is on."""
        return self._tracking

    # -- recording -------------------------------------------------------------------------
    def start_recording(self, path: str | Path) -> None:
        """Append every later page write to ``path`` as a dirty-page trace (see workloads)."""
        handle = Path(path).open("w", encoding="ascii")  # noqa: SIM115 - closed by stop_recording
        handle.write(TRACE_HEADER + "\n")
        with self._lock:
            self._close_recorder()
            self._recorder = handle
            self._record_start = time.monotonic()

    def stop_recording(self) -> None:
        """Stop recording and close the trace file."""
        with self._lock:
            self._close_recorder()

    def _close_recorder(self) -> None:
        if self._recorder is not None:
            self._recorder.close()
            self._recorder = None

    # -- initial content -------------------------------------------------------------------
    def load_image(self, path: str | Path) -> None:
        """Initialise memory from a raw image file; a shorter file leaves the rest zero."""
        image = Path(path)
        try:
            file_size = image.stat().st_size
        except OSError as exc:
            msg = f"cannot read memory image {str(image)!r}: {exc.strerror}"
            raise DriverError(msg) from exc
        if file_size > self.size_bytes:
            msg = (
                f"memory image {str(image)!r} is {file_size} bytes but the VM has only "
                f"{self.size_bytes} bytes of memory: give the VM more memory_mib or use a "
                "smaller image"
            )
            raise DriverError(msg)
        with image.open("rb") as handle, self._lock:
            self._check_open()
            offset = 0
            while chunk := handle.read(_CHUNK_BYTES):
                self._view[offset : offset + len(chunk)] = chunk
                offset += len(chunk)
            self._zero_from(offset)

    def fill(self, kind: str = "mixed", seed: int = 0) -> None:
        """Overwrite all memory: ``zero``, or ``mixed`` (zero, duplicate and semi-compressible
        pages in realistic shares, generated deterministically from ``seed``)."""
        if kind == "zero":
            with self._lock:
                self._check_open()
                self._zero_from(0)
            return
        if kind != "mixed":
            msg = f"unknown memory fill {kind!r}: use 'zero' or 'mixed'"
            raise DriverError(msg)
        self._fill_mixed(seed)

    def _zero_from(self, offset: int) -> None:
        zeros = bytes(min(_CHUNK_BYTES, self.size_bytes))
        while offset < self.size_bytes:
            end = min(offset + _CHUNK_BYTES, self.size_bytes)
            self._view[offset:end] = zeros[: end - offset]
            offset = end

    def _fill_mixed(self, seed: int) -> None:
        size = self.page_size
        rng = random.Random(seed)
        templates = [
            text_page(rng, size) if n % 2 else structured_page(rng, size)
            for n in range(_TEMPLATE_COUNT)
        ]
        duplicates = [rng.choice(templates) for _ in range(_DUPLICATE_COUNT)]
        zero = bytes(size)
        noise_pool = rng.randbytes(1 << 20)
        for first in range(0, self.page_count, _FILL_BATCH_PAGES):
            last = min(first + _FILL_BATCH_PAGES, self.page_count)
            parts: list[bytes] = []
            for index in range(first, last):
                # One 64-bit draw per page decides everything, which keeps the fill fast.
                bits = rng.getrandbits(64)
                roll = bits & 0xFF
                if roll < 102:  # ~40% zero pages
                    parts.append(zero)
                elif roll < 128:  # ~10% exact duplicates
                    parts.append(duplicates[(bits >> 8) % _DUPLICATE_COUNT])
                else:
                    template = templates[(bits >> 8) % _TEMPLATE_COUNT]
                    length = 32 + (bits >> 13) % 480
                    at = _STAMP.size + (bits >> 22) % (size - _STAMP.size - length)
                    start = (bits >> 34) % (len(noise_pool) - length)
                    parts.append(
                        _STAMP.pack(index, seed)
                        + template[_STAMP.size : at]
                        + noise_pool[start : start + length]
                        + template[at + length :]
                    )
            with self._lock:
                self._check_open()
                self._view[first * size : last * size] = b"".join(parts)
