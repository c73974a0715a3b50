"""Layout of the counters file a forwarder publishes and the emulator reads (shared memory)."""

from __future__ import annotations

import struct

COUNTERS = struct.Struct("=9Q")
"""packets_in, bytes_in, packets_out, bytes_out, dropped_loss, dropped_queue, dropped_foreign,
bucket_count, cpu_ns (forwarder CPU time; non-zero once the forwarder runs)."""
BUCKET_S = 0.1
"""Delivered bytes are also counted per interval of this length (for trace checks)."""
MAX_BUCKETS = 36_000
STATS_SIZE = COUNTERS.size + 8 * MAX_BUCKETS
CONTROL = struct.Struct("=4Q")
"""The control file a forwarder polls: cut_generation, cut (0/1) written by the emulator;
applied_generation, dropped_cut (packets dropped while cut) written by the forwarder."""
CONTROL_HALF = struct.Struct("=2Q")
"""Either half of CONTROL: the emulator's request at offset 0, the forwarder's answer at 16."""
