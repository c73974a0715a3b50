"""One direction of the WAN emulator: read packets from one TUN device, write them to the other.

Run as ``python -m novacron_sdk.testing.wan.forwarder`` by :class:`WanEmulator`, with both
TUN file descriptors inherited. Packets are read in batches (non-blocking reads until EAGAIN)
and held in a FIFO until their delivery time; the loop sleeps in epoll until the next packet
is due or a new one arrives. Only IPv4 packets addressed to the other host are forwarded.
Counters are published in a small memory-mapped file the parent reads at any time. With
``--control``, a second small file lets the parent cut the link: while cut, every packet is
dropped, including those already in flight (a partition).
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import select
import signal
import struct
import time
from collections import deque
from pathlib import Path

from novacron_sdk.testing.wan.counters import (
    BUCKET_S,
    CONTROL,
    CONTROL_HALF,
    COUNTERS,
    MAX_BUCKETS,
    STATS_SIZE,
)
from novacron_sdk.testing.wan.link import LinkProfile, LinkScheduler, Trace

_READ_BATCH = 256
_EARLY_S = 0.00005
"""Wake this much early: a select() sleep overshoots by about as much."""


def profile_from_json(data: dict[str, object]) -> LinkProfile:
    """Rebuild a LinkProfile from the JSON the parent passed."""
    trace = None
    if data.get("trace"):
        spec = data["trace"]
        assert isinstance(spec, dict)
        trace = Trace(tuple(tuple(x) for x in spec["steps"]), float(spec["period_s"]), spec["name"])
    rate = data.get("rate_bps")
    queue = data.get("queue_bytes")
    return LinkProfile(
        rate_bps=float(rate) if isinstance(rate, int | float) else None,
        delay_s=float(data.get("delay_s", 0.0)),  # type: ignore[arg-type]
        loss=float(data.get("loss", 0.0)),  # type: ignore[arg-type]
        queue_bytes=int(queue) if isinstance(queue, int) else None,
        trace=trace,
    )


class _Cut:
    """The parent's cut switch (a shared-memory file); a no-op when there is none."""

    def __init__(self, path: Path | None) -> None:
        self.control: mmap.mmap | None = None
        if path is not None:
            with path.open("r+b") as handle:
                self.control = mmap.mmap(handle.fileno(), CONTROL.size)
        self.generation = 0
        self.cut = False
        self.dropped = 0

    def poll(self) -> bool:
        """Whether the parent changed the switch (``self.cut`` then holds the new state)."""
        if self.control is None:
            return False
        generation, cut = CONTROL_HALF.unpack_from(self.control)
        if generation == self.generation:
            return False
        self.generation, self.cut = generation, bool(cut)
        self.publish()
        return True

    def publish(self) -> None:
        """Acknowledge the generation applied, and count the drops."""
        if self.control is not None:
            CONTROL_HALF.pack_into(self.control, CONTROL_HALF.size, self.generation, self.dropped)


def run(  # noqa: PLR0912, PLR0915 -- one hot loop, kept in one frame for speed
    in_fd: int,
    out_fd: int,
    profile: LinkProfile,
    *,
    dst: bytes,
    stats_path: Path,
    seed: int | None,
    control_path: Path | None = None,
) -> None:
    """Forward until SIGTERM."""
    stop = False

    def on_term(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    os.set_blocking(in_fd, False)
    with stats_path.open("r+b") as handle:
        stats = mmap.mmap(handle.fileno(), STATS_SIZE)
    scheduler = LinkScheduler(profile, seed=seed)
    switch = _Cut(control_path)
    queue: deque[tuple[float, bytes]] = deque()
    # select(), not epoll: epoll rounds its timeout up to whole milliseconds, select()
    # sleeps with microsecond resolution, and there is only one descriptor to watch.
    watch = [in_fd]
    started = time.monotonic()
    parent = os.getppid()
    counters = [0] * 7
    buckets: dict[int, int] = {}
    dirty: set[int] = set()
    last_publish = 0.0
    _publish(stats, counters, scheduler, buckets, dirty)  # tells the parent we are running
    read, write, monotonic = os.read, os.write, time.monotonic
    while not stop:
        timeout = -1.0 if not queue else max(0.0, queue[0][0] - (monotonic() - started) - _EARLY_S)
        if timeout < 0 or timeout > 0.05:
            timeout = 0.05  # wake up to publish counters and notice SIGTERM
        try:
            events, _, _ = select.select(watch, [], [], timeout)
        except InterruptedError:
            continue
        if switch.poll() and switch.cut:
            # A cut link loses what is on the wire too, as a pulled cable does.
            switch.dropped += len(queue)
            queue.clear()
            # Nor is the link still busy sending what was dropped: after a heal, the next
            # packet finds it free (it used to wait behind the lost backlog).
            scheduler.link_free_at = min(scheduler.link_free_at, monotonic() - started)
            switch.publish()
        if events:
            for _ in range(_READ_BATCH):
                try:
                    packet = read(in_fd, 65536)
                except BlockingIOError:
                    break
                # Stamped after its read: a packet that arrived while this batch was read
                # (or while the forwarder was preempted) must not count as arrived earlier,
                # or it leaves before its delay is over.
                now = monotonic() - started
                size = len(packet)
                counters[0] += 1
                counters[1] += size
                # IPv4 only, and only to the other host: nothing else ever leaves.
                if size < 20 or packet[0] >> 4 != 4 or packet[16:20] != dst:
                    counters[6] += 1
                    continue
                if switch.cut:
                    switch.dropped += 1
                    continue
                due = scheduler.admit(now, size)
                if due is not None:
                    queue.append((due, packet))
        now = monotonic() - started
        horizon = now + _EARLY_S
        while queue and queue[0][0] <= horizon:
            _, packet = queue.popleft()
            try:
                write(out_fd, packet)
            except OSError:
                counters[5] += 1
                continue
            counters[2] += 1
            counters[3] += len(packet)
            bucket = int(now / BUCKET_S)
            buckets[bucket] = buckets.get(bucket, 0) + len(packet)
            dirty.add(bucket)
        if now - last_publish >= 0.05:
            last_publish = now
            _publish(stats, counters, scheduler, buckets, dirty)
            switch.publish()
            # The emulator's process died without stopping us: do not linger as an orphan.
            stop = stop or os.getppid() != parent
    _publish(stats, counters, scheduler, buckets, dirty)
    stats.close()


def _publish(
    stats: mmap.mmap,
    counters: list[int],
    scheduler: LinkScheduler,
    buckets: dict[int, int],
    dirty: set[int],
) -> None:
    count = min(MAX_BUCKETS, max(buckets) + 1) if buckets else 0
    cpu_ns = time.process_time_ns()
    COUNTERS.pack_into(
        stats,
        0,
        counters[0],
        counters[1],
        counters[2],
        counters[3],
        scheduler.dropped_loss,
        scheduler.dropped_queue + counters[5],
        counters[6],
        count,
        cpu_ns,
    )
    for index in dirty:
        if index < MAX_BUCKETS:
            struct.pack_into("=Q", stats, COUNTERS.size + 8 * index, buckets[index])
    dirty.clear()


def main() -> None:
    """Entry point used by WanEmulator."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--in-fd", type=int, required=True)
    parser.add_argument("--out-fd", type=int, required=True)
    parser.add_argument("--dst", required=True, help="IPv4 address of the receiving host")
    parser.add_argument("--profile", required=True, help="LinkProfile as JSON")
    parser.add_argument("--stats", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--control", type=Path, default=None, help="cut switch file")
    args = parser.parse_args()
    dst = bytes(int(x) for x in args.dst.split("."))
    profile = profile_from_json(json.loads(args.profile))
    run(
        args.in_fd,
        args.out_fd,
        profile,
        dst=dst,
        stats_path=args.stats,
        seed=args.seed,
        control_path=args.control,
    )


if __name__ == "__main__":
    main()
