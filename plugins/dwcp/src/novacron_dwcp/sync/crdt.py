"""State-based CRDTs for the multi-region inventory: a last-writer-wins map and an
observed-remove set, in one :class:`Replica` that ships deltas by per-origin watermarks.

Rules (what "no lost update" means here):

- LWW map: of two writes to one key, the one with the greater HLC timestamp wins, on every
  replica; the other is lost by design. A delete is a write of a tombstone, so a delete and
  a concurrent write are ordered the same way.
- OR-set: a remove removes only the adds its replica had seen; an add concurrent with a
  remove survives (add wins). Removed tags are kept as tombstones (no garbage collection).

Every item carries the HLC timestamp of the write that made it, and a node's timestamps
only grow. A replica keeps, per origin node, the greatest timestamp it has merged
(``seen``). ``delta(seen_of_peer)`` is every item newer than the peer's watermark for its
origin; after merging such a delta the peer may adopt our watermarks, because anything older
that it lacks was superseded by an item it now has.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from novacron_dwcp.sync.hlc import ZERO, HybridLogicalClock, Timestamp

Watermarks = dict[str, Timestamp]
_TOMBSTONE: Any = None


def _newer(ts: Timestamp, seen: Mapping[str, Timestamp]) -> bool:
    return ts > seen.get(ts.node, ZERO)


@dataclass
class LWWMap:
    """Key -> (timestamp, JSON value or None for deleted)."""

    entries: dict[str, tuple[Timestamp, Any]] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        """The value, or ``default`` when absent or deleted."""
        entry = self.entries.get(key)
        return default if entry is None or entry[1] is _TOMBSTONE else entry[1]

    def items(self) -> dict[str, Any]:
        """Every live key and value."""
        return {k: v for k, (_, v) in self.entries.items() if v is not _TOMBSTONE}

    def apply(self, key: str, ts: Timestamp, value: Any) -> bool:
        """Keep ``value`` if ``ts`` beats the current entry; whether it did."""
        current = self.entries.get(key)
        if current is not None and current[0] >= ts:
            return False
        self.entries[key] = (ts, value)
        return True

    def delta(self, seen: Mapping[str, Timestamp]) -> list[list[Any]]:
        """``[key, ts, value]`` of every entry newer than ``seen`` for its origin."""
        return [[k, ts.encode(), v] for k, (ts, v) in self.entries.items() if _newer(ts, seen)]


@dataclass
class ORSet:
    """Elements with unique add tags; removes tombstone the tags they observed."""

    adds: dict[Timestamp, str] = field(default_factory=dict)
    removed: dict[Timestamp, Timestamp] = field(default_factory=dict)

    def elements(self) -> set[str]:
        """The elements with at least one add that is not removed."""
        return {e for tag, e in self.adds.items() if tag not in self.removed}

    def observed_tags(self, element: str) -> list[Timestamp]:
        """Live add tags of ``element`` (what a remove here would tombstone)."""
        return [t for t, e in self.adds.items() if e == element and t not in self.removed]

    def apply_add(self, element: str, tag: Timestamp) -> bool:
        """Record an add; whether it was new."""
        if tag in self.adds:
            return False
        self.adds[tag] = element
        return True

    def apply_remove(self, element: str, tag: Timestamp, ts: Timestamp) -> bool:
        """Tombstone ``tag`` (removed at ``ts``); whether it was new."""
        if tag in self.removed:
            return False
        self.adds.setdefault(tag, element)
        self.removed[tag] = ts
        return True

    def delta(self, seen: Mapping[str, Timestamp]) -> dict[str, list[list[Any]]]:
        """Adds and removes newer than ``seen`` for their origin."""
        return {
            "adds": [[e, t.encode()] for t, e in self.adds.items() if _newer(t, seen)],
            "removes": [
                [self.adds[t], t.encode(), r.encode()]
                for t, r in self.removed.items()
                if _newer(r, seen)
            ],
        }


@dataclass
class Replica:
    """One region's copy: named LWW maps and OR-sets, its HLC, and per-origin watermarks."""

    node: str
    clock: HybridLogicalClock = field(init=False)
    maps: dict[str, LWWMap] = field(default_factory=dict)
    sets: dict[str, ORSet] = field(default_factory=dict)
    seen: Watermarks = field(default_factory=dict)
    on_merge: Callable[[Timestamp], None] | None = None

    def __post_init__(self) -> None:
        self.clock = HybridLogicalClock(self.node)

    def map(self, name: str) -> LWWMap:
        """The LWW map ``name`` (created empty)."""
        return self.maps.setdefault(name, LWWMap())

    def set(self, name: str) -> ORSet:
        """The OR-set ``name`` (created empty)."""
        return self.sets.setdefault(name, ORSet())

    def _local(self) -> Timestamp:
        ts = self.clock.now()
        self.seen[self.node] = ts
        return ts

    def put(self, map_name: str, key: str, value: Any) -> Timestamp:
        """Write ``key`` in map ``map_name``; value must be JSON-serialisable and not None."""
        if value is None:
            msg = "None marks deletion in an LWW map; call delete() instead"
            raise ValueError(msg)
        ts = self._local()
        self.map(map_name).apply(key, ts, value)
        return ts

    def delete(self, map_name: str, key: str) -> Timestamp:
        """Delete ``key`` (a tombstone that wins over older writes)."""
        ts = self._local()
        self.map(map_name).apply(key, ts, _TOMBSTONE)
        return ts

    def add(self, set_name: str, element: str) -> Timestamp:
        """Add ``element`` to OR-set ``set_name``."""
        ts = self._local()
        self.set(set_name).apply_add(element, ts)
        return ts

    def remove(self, set_name: str, element: str) -> int:
        """Remove the adds of ``element`` seen here; how many tags were tombstoned."""
        orset = self.set(set_name)
        tags = orset.observed_tags(element)
        if tags:
            ts = self._local()
            for tag in tags:
                orset.apply_remove(element, tag, ts)
        return len(tags)

    def delta(self, seen: Mapping[str, Timestamp]) -> dict[str, Any]:
        """Everything newer than the peer's watermarks ``seen``, as JSON-ready data."""
        return {
            "maps": {name: m.delta(seen) for name, m in self.maps.items()},
            "sets": {name: s.delta(seen) for name, s in self.sets.items()},
        }

    def merge(self, delta: Mapping[str, Any], peer_seen: Mapping[str, Timestamp]) -> int:
        """Merge a peer's delta (made against our watermarks); how many items were new."""
        applied: list[Timestamp] = []
        for name, entries in delta.get("maps", {}).items():
            target = self.map(name)
            for key, raw_ts, value in entries:
                ts = Timestamp.decode(raw_ts)
                if target.apply(key, ts, value):
                    applied.append(ts)
        for name, body in delta.get("sets", {}).items():
            target_set = self.set(name)
            for element, raw_tag in body.get("adds", ()):
                tag = Timestamp.decode(raw_tag)
                if target_set.apply_add(element, tag):
                    applied.append(tag)
            for element, raw_tag, raw_ts in body.get("removes", ()):
                ts = Timestamp.decode(raw_ts)
                if target_set.apply_remove(element, Timestamp.decode(raw_tag), ts):
                    applied.append(ts)
        for ts in applied:
            self.clock.observe(ts)
            if self.on_merge is not None:
                self.on_merge(ts)
        for origin, mark in peer_seen.items():
            if mark > self.seen.get(origin, ZERO):
                self.seen[origin] = mark
        return len(applied)

    def digest(self) -> dict[str, Any]:
        """Everything visible, for comparing replicas: map items and set elements."""
        return {
            "maps": {n: m.items() for n, m in sorted(self.maps.items())},
            "sets": {n: sorted(s.elements()) for n, s in sorted(self.sets.items())},
        }


def encode_seen(seen: Mapping[str, Timestamp]) -> dict[str, list[int | str]]:
    """Watermarks as JSON."""
    return {origin: ts.encode() for origin, ts in seen.items()}


def decode_seen(raw: Mapping[str, Any]) -> Watermarks:
    """Inverse of :func:`encode_seen`."""
    return {origin: Timestamp.decode(ts) for origin, ts in raw.items()}
