"""A user-space WAN link emulator for tests and benchmarks (delay, rate, loss, queue, traces).

Two network namespaces joined through TUN devices by forwarder processes, as mahimahi does
(``WanEmulator``), or N namespaces joined pairwise, each region partitionable (``WanMesh``);
see docs/wan-emulator.md. Needs root and /dev/net/tun; ``skip_unless_available()`` skips a
test with the reason otherwise.
"""

from novacron_sdk.testing.wan.emulator import (
    ADDRESSES,
    DirectionStats,
    WanEmulator,
    WanEmulatorError,
    cleanup_stale,
    skip_unless_available,
    unavailable_reason,
)
from novacron_sdk.testing.wan.link import LinkProfile, LinkScheduler, Trace, symmetric
from novacron_sdk.testing.wan.mesh import WanMesh

__all__ = [
    "ADDRESSES",
    "DirectionStats",
    "LinkProfile",
    "LinkScheduler",
    "Trace",
    "WanEmulator",
    "WanEmulatorError",
    "WanMesh",
    "cleanup_stale",
    "skip_unless_available",
    "symmetric",
    "unavailable_reason",
]
