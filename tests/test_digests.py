"""The per-page digest tables that both ends of a migration compare."""

from __future__ import annotations

import os

from novacron_sdk.migration.digests import DIGEST_SIZE, DigestTable, page_digest, page_digests


def test_digests_cover_every_page_and_differ_with_content() -> None:
    data = os.urandom(4096 * 3)
    digests = page_digests(data, 4096)
    assert len(digests) == 3
    assert all(len(d) == DIGEST_SIZE for d in digests)
    assert digests[1] == page_digest(data[4096:8192])
    assert len(set(digests)) == 3


def test_table_counts_missing_pages_and_finds_mismatches() -> None:
    table = DigestTable(4)
    assert table.unset_pages() == 4
    empty_summary = table.summary()
    table.update([0, 2], [b"a" * 16, b"b" * 16])
    assert table.unset_pages() == 2
    assert table.get(2) == b"b" * 16
    assert table.summary() != empty_summary
    other = DigestTable(4)
    other.update([0, 2], [b"a" * 16, b"c" * 16])
    assert table.mismatches(other.raw()) == [2]
    assert table.summary() != other.summary()
    table.update([0], [b"z" * 16])  # rewriting a page does not change the count
    assert table.unset_pages() == 2
