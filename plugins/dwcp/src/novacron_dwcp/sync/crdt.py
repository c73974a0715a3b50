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

    def merge(self, delta: Mapping[str, Any] | Delta, peer_seen: Mapping[str, Timestamp]) -> int:
        """Merge a peer's delta (made against our watermarks); how many items were new.

        A raw (JSON) delta is decoded and checked whole by :func:`decode_delta` before
        anything is applied, so a malformed one raises :class:`DeltaError` and changes nothing.
        """
        decoded = delta if isinstance(delta, Delta) else decode_delta(delta)
        applied: list[Timestamp] = []
        for name, map_entries in decoded.maps.items():
            target = self.map(name)
            for key, ts, value in map_entries:
                if target.apply(key, ts, value):
                    applied.append(ts)
        for name, (adds, removes) in decoded.sets.items():
            target_set = self.set(name)
            for element, tag in adds:
                if target_set.apply_add(element, tag):
                    applied.append(tag)
            for element, tag, ts in removes:
                if target_set.apply_remove(element, tag, ts):
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


def decode_seen(raw: Any) -> Watermarks:
    """Inverse of :func:`encode_seen`; :class:`DeltaError` when ``raw`` is malformed."""
    if not isinstance(raw, Mapping):
        msg = f"seen must be an object of origin -> timestamp, got {type(raw).__name__}"
        raise DeltaError(msg)
    return {
        _string(origin, "seen origin"): decode_timestamp(ts, f"seen[{origin!r}]")
        for origin, ts in raw.items()
    }


class DeltaError(ValueError):
    """A delta or watermark set from a peer is malformed; nothing of it was applied."""


MapEntry = tuple[str, Timestamp, Any]
SetAdd = tuple[str, Timestamp]
SetRemove = tuple[str, Timestamp, Timestamp]


@dataclass(frozen=True)
class Delta:
    """A decoded, checked delta: per map ``(key, ts, value)``; per set ``(adds, removes)``."""

    maps: dict[str, list[MapEntry]] = field(default_factory=dict)
    sets: dict[str, tuple[list[SetAdd], list[SetRemove]]] = field(default_factory=dict)


def _string(raw: Any, where: str) -> str:
    if not isinstance(raw, str):
        msg = f"{where}: expected a string, got {raw!r}"
        raise DeltaError(msg)
    return raw


def _items(raw: Any, length: int, where: str) -> list[Any]:
    if not isinstance(raw, list | tuple) or len(raw) != length:
        msg = f"{where}: expected a list of {length} items, got {raw!r}"
        raise DeltaError(msg)
    return list(raw)


def _list(raw: Any, where: str) -> list[Any]:
    if not isinstance(raw, list | tuple):
        msg = f"{where}: expected a list, got {type(raw).__name__}"
        raise DeltaError(msg)
    return list(raw)


def _object(raw: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        msg = f"{where}: expected an object, got {type(raw).__name__}"
        raise DeltaError(msg)
    return raw


def decode_timestamp(raw: Any, where: str = "timestamp") -> Timestamp:
    """``[wall_ms, logical, node]`` with non-negative integers and a non-empty node name."""
    wall, logical, node = _items(raw, 3, where)
    for number in (wall, logical):
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            msg = f"{where}: expected [wall_ms, logical, node] with integers >= 0, got {raw!r}"
            raise DeltaError(msg)
    if not isinstance(node, str) or not node:
        msg = f"{where}: expected a non-empty node name as the third item, got {node!r}"
        raise DeltaError(msg)
    return Timestamp(wall, logical, node)


def decode_delta(raw: Any) -> Delta:
    """Check and decode a whole JSON delta (as :meth:`Replica.delta` makes it).

    Raises :class:`DeltaError` naming the first bad item; applies nothing, so a caller can
    reject the delta as a whole.
    """
    body = _object(raw, "delta")
    unknown = set(body) - {"maps", "sets"}
    if unknown:
        msg = f"delta: unknown sections {sorted(unknown)} (expected maps, sets)"
        raise DeltaError(msg)
    maps: dict[str, list[MapEntry]] = {}
    for name, entries in _object(body.get("maps", {}), "delta.maps").items():
        where = f"delta.maps[{name!r}]"
        decoded: list[MapEntry] = []
        for i, entry in enumerate(_list(entries, where)):
            key, raw_ts, value = _items(entry, 3, f"{where}[{i}]")
            decoded.append(
                (
                    _string(key, f"{where}[{i}] key"),
                    decode_timestamp(raw_ts, f"{where}[{i}] timestamp"),
                    value,
                )
            )
        maps[_string(name, "delta.maps name")] = decoded
    sets: dict[str, tuple[list[SetAdd], list[SetRemove]]] = {}
    for name, section in _object(body.get("sets", {}), "delta.sets").items():
        where = f"delta.sets[{name!r}]"
        section_body = _object(section, where)
        unknown = set(section_body) - {"adds", "removes"}
        if unknown:
            msg = f"{where}: unknown sections {sorted(unknown)} (expected adds, removes)"
            raise DeltaError(msg)
        adds: list[SetAdd] = []
        for i, entry in enumerate(_list(section_body.get("adds", []), f"{where}.adds")):
            element, raw_tag = _items(entry, 2, f"{where}.adds[{i}]")
            adds.append(
                (
                    _string(element, f"{where}.adds[{i}] element"),
                    decode_timestamp(raw_tag, f"{where}.adds[{i}] tag"),
                )
            )
        removes: list[SetRemove] = []
        for i, entry in enumerate(_list(section_body.get("removes", []), f"{where}.removes")):
            element, raw_tag, raw_ts = _items(entry, 3, f"{where}.removes[{i}]")
            removes.append(
                (
                    _string(element, f"{where}.removes[{i}] element"),
                    decode_timestamp(raw_tag, f"{where}.removes[{i}] tag"),
                    decode_timestamp(raw_ts, f"{where}.removes[{i}] timestamp"),
                )
            )
        sets[_string(name, "delta.sets name")] = (adds, removes)
    return Delta(maps, sets)
