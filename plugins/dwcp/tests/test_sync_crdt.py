"""The CRDTs alone: HLC order, LWW and OR-set merge laws, delta completeness by watermarks."""

from __future__ import annotations

import random
from typing import Any

from novacron_dwcp.sync.crdt import Replica
from novacron_dwcp.sync.hlc import HybridLogicalClock, Timestamp


def test_hlc_never_goes_back_and_orders_receive_after_send() -> None:
    """A stuck or backwards wall clock still gives growing timestamps; observe() moves past."""
    wall = [1000]
    clock = HybridLogicalClock("a", clock=lambda: wall[0])
    first = clock.now()
    wall[0] = 900  # the system clock stepped back
    second = clock.now()
    assert second > first
    remote = Timestamp(5000, 7, "b")
    clock.observe(remote)
    assert clock.now() > remote
    wall[0] = 9000
    assert clock.now() == Timestamp(9000, 0, "a")


def _exchange(a: Replica, b: Replica) -> None:
    """One push-pull exchange without a network, as SyncNode does it."""
    b.merge(a.delta(b.seen), dict(a.seen))
    a.merge(b.delta(a.seen), dict(b.seen))


def _random_ops(rng: random.Random, replicas: list[Replica], steps: int) -> list[tuple[Any, ...]]:
    log: list[tuple[Any, ...]] = []
    for _ in range(steps):
        replica = rng.choice(replicas)
        key = f"k{rng.randrange(6)}"
        action = rng.random()
        if action < 0.45:
            value = rng.randrange(1000)
            log.append(("put", key, replica.put("m", key, value), value))
        elif action < 0.55:
            log.append(("put", key, replica.delete("m", key), None))
        elif action < 0.8:
            replica.add("s", key)
        elif action < 0.9:
            replica.remove("s", key)
        else:
            a, b = rng.sample(replicas, 2)
            _exchange(a, b)
    return log


def test_random_histories_converge_to_the_lww_rule() -> None:
    """After any history and a full round of exchanges, replicas agree, and every key holds
    the value of its write with the greatest timestamp."""
    for seed in range(30):
        rng = random.Random(seed)
        replicas = [Replica(f"r{i}") for i in range(3)]
        log = _random_ops(rng, replicas, 80)
        for a in replicas:
            for b in replicas:
                if a is not b:
                    _exchange(a, b)
        digests = [r.digest() for r in replicas]
        assert digests[0] == digests[1] == digests[2], f"seed {seed}"
        expected: dict[str, Any] = {}
        for _, key, _ts, value in sorted(log, key=lambda entry: entry[2]):
            expected[key] = value
        live = {k: v for k, v in expected.items() if v is not None}
        assert replicas[0].map("m").items() == live, f"seed {seed}"


def test_or_set_add_wins_over_a_concurrent_remove() -> None:
    """A remove deletes only the adds its replica saw."""
    a, b = Replica("a"), Replica("b")
    a.add("hosts", "h1")
    _exchange(a, b)
    b.remove("hosts", "h1")  # b saw the first add
    a.add("hosts", "h1")  # concurrent re-add at a
    _exchange(a, b)
    assert a.set("hosts").elements() == b.set("hosts").elements() == {"h1"}
    a.remove("hosts", "h1")
    _exchange(a, b)
    assert a.set("hosts").elements() == b.set("hosts").elements() == set()


def test_merge_is_idempotent_and_deltas_shrink() -> None:
    """Merging the same delta twice changes nothing; after an exchange the delta is empty."""
    a, b = Replica("a"), Replica("b")
    for i in range(10):
        a.put("m", f"k{i}", i)
    delta = a.delta(b.seen)
    assert b.merge(delta, dict(a.seen)) == 10
    assert b.merge(delta, dict(a.seen)) == 0
    assert a.delta(b.seen) == {"maps": {"m": []}, "sets": {}}
    a.put("m", "k3", "new")
    assert a.delta(b.seen)["maps"]["m"] == [["k3", list(a.map("m").entries["k3"][0]), "new"]]
