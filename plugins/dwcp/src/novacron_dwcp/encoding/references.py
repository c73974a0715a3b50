"""Reference files: pages both ends already hold, preloaded into the chain's page stores.

A guest's memory holds copies of files its destination must hold too: a direct-boot kernel
(about 3,450 of the memory corpus guests' RAM pages are pages of their kernel file, at page
offsets), an initrd, base images. Given the same files (codec setting ``reference_files``),
encoder and decoder put the files' distinct non-zero pages into their page stores before the
first batch, under page indices from ``REFERENCE_BASE`` on, which batches never use. A guest
page equal to one of them is then found by the ordinary duplicate search and travels as an
8-byte reference, confirmed byte for byte like every duplicate.

Both ends must be given files with the same content, in the same order (paths may differ):
their SHA-256 digests seed the stream's rolling state, so a decoder given other files stops at
the first batch with a DesyncError that says so, never rebuilding a wrong page. Reference
pages are evicted like any other page when the store runs out of room, and may fill at most
half of it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from novacron_dwcp.encoding.integrity import STATE_SIZE, next_state
from novacron_sdk.errors import EncodingError

REFERENCE_BASE = 1 << 62
"""Page indices from here on name reference pages; batches use indices below it."""
MAX_SHARE = 2
"""Reference pages may fill at most 1/MAX_SHARE of the page store."""
_SEED_TAG = b"novacron-dwcp reference files\0"


def files_from(settings: Mapping[str, Any]) -> list[Path]:
    """The ``reference_files`` codec setting as paths (empty when not set)."""
    raw = settings.get("reference_files") or []
    if isinstance(raw, str | PathLike) or not isinstance(raw, list | tuple):
        msg = f"codec setting reference_files must be a list of file paths, not {raw!r}"
        raise EncodingError(msg)
    paths = []
    for item in raw:
        if not isinstance(item, str | PathLike):
            msg = f"codec setting reference_files holds {item!r}; give file paths"
            raise EncodingError(msg)
        paths.append(Path(item))
    return paths


class ReferencePages:
    """The distinct non-zero pages of the reference files, in file order, and their seed."""

    def __init__(self, files: list[Path], page_size: int, max_pages: int) -> None:
        sizes = []
        for path in files:
            try:
                sizes.append(path.stat().st_size)
            except OSError as exc:
                msg = f"reference file {path} cannot be read: {exc.strerror or exc}"
                raise EncodingError(msg) from exc
        pages = sum(-(-size // page_size) for size in sizes)
        if pages > max_pages:
            msg = (
                f"reference files hold {pages} pages; the page store takes at most {max_pages} "
                "of them (half its size): raise the cache_mib codec setting or give fewer files"
            )
            raise EncodingError(msg)
        digests = []
        rows: list[np.ndarray] = []
        for path in files:
            try:
                content = path.read_bytes()
            except OSError as exc:
                msg = f"reference file {path} cannot be read: {exc.strerror or exc}"
                raise EncodingError(msg) from exc
            digests.append(hashlib.sha256(content).digest())
            padded = content + bytes(-len(content) % page_size)
            table = np.frombuffer(padded, np.uint64).reshape(-1, page_size // 8)
            rows.append(table[table.any(axis=1)])
        words = page_size // 8
        table = np.concatenate(rows) if rows else np.zeros((0, words), np.uint64)
        # Distinct pages, first occurrence first: a page twice in the files is stored once.
        if len(table):
            _, first = np.unique(table.view(np.dtype((np.void, page_size))), return_index=True)
            table = table[np.sort(first)]
        self.table = np.ascontiguousarray(table)
        self.seed = next_state(bytes(STATE_SIZE), _SEED_TAG + b"".join(digests))

    def __len__(self) -> int:
        return len(self.table)


def load(settings: Mapping[str, Any], page_size: int, capacity: int) -> ReferencePages | None:
    """The reference pages the settings name for a store of ``capacity`` pages, or None."""
    files = files_from(settings)
    if not files:
        return None
    return ReferencePages(files, page_size, capacity // MAX_SHARE)
