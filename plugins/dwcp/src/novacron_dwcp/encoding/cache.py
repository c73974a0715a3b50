"""The page-version cache both ends of a DWCP stream keep identical.

Both sides apply exactly the same operations in the same order, so the decoder always holds
every page version the encoder may refer to. The encoder also indexes cached content, to find
duplicates; an entry leaves that index the moment it leaves (or changes in) the cache, so a
reference never points to content the decoder no longer has.
"""

from __future__ import annotations

from collections import OrderedDict


class PageCache:
    """A bounded LRU of page index -> content; the decoder side (no content index)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.pages: OrderedDict[int, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self.pages)

    def get(self, index: int) -> bytes | None:
        """The cached version of page ``index``, if any."""
        return self.pages.get(index)

    def drop(self, index: int) -> None:
        """Forget page ``index`` (it became a zero page)."""
        self.pages.pop(index, None)

    def put(self, index: int, page: bytes) -> None:
        """Store the receiver's new version of page ``index``, evicting the oldest if full."""
        pages = self.pages
        if index in pages:
            pages[index] = page
            pages.move_to_end(index)
            return
        pages[index] = page
        if len(pages) > self.capacity:
            pages.popitem(last=False)


class IndexedPageCache(PageCache):
    """The encoder side: the same LRU, plus fingerprint -> page index to find duplicates.

    Fingerprints are 64-bit weighted sums computed for a whole batch at once with numpy;
    a match is only a candidate, confirmed by comparing the bytes (see ``find``).
    """

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self.by_fingerprint: dict[int, int] = {}
        self.fingerprints: dict[int, int] = {}

    def find(self, page: bytes, fingerprint: int) -> int | None:
        """A cached page index holding exactly ``page``, if any."""
        index = self.by_fingerprint.get(fingerprint)
        if index is not None and self.pages[index] == page:
            return index
        return None

    def _unindex(self, index: int) -> None:
        fingerprint = self.fingerprints.pop(index, None)
        if fingerprint is not None and self.by_fingerprint.get(fingerprint) == index:
            del self.by_fingerprint[fingerprint]

    def drop(self, index: int) -> None:
        """Forget page ``index`` and its fingerprint."""
        if self.pages.pop(index, None) is not None:
            self._unindex(index)

    def put_indexed(self, index: int, page: bytes, fingerprint: int) -> None:
        """Store and index the new version; unindex what is replaced or evicted."""
        pages = self.pages
        if index in pages:
            self._unindex(index)
            pages[index] = page
            pages.move_to_end(index)
        else:
            pages[index] = page
            if len(pages) > self.capacity:
                evicted, _ = pages.popitem(last=False)
                self._unindex(evicted)
        self.by_fingerprint[fingerprint] = index
        self.fingerprints[index] = fingerprint
