"""Per-socket TCP tuning: congestion control with a clean fallback, buffers, and TCP_INFO."""

from __future__ import annotations

import logging
import socket
import struct
from dataclasses import dataclass

log = logging.getLogger(__name__)

_TCP_CONGESTION = getattr(socket, "TCP_CONGESTION", 13)
_TCP_INFO = getattr(socket, "TCP_INFO", 11)
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
_FALLBACKS = ("cubic", "reno")
_warned: set[str] = set()


def set_congestion(sock: socket.socket, wanted: str) -> str:
    """Set TCP_CONGESTION to ``wanted``, else the first fallback the kernel allows.

    Returns the algorithm the socket really uses. A kernel without the module (ENOENT) or a
    non-root process asking for an algorithm outside ``tcp_allowed_congestion_control``
    (EPERM) falls back instead of failing: the transport still works, only slower.
    """
    for name in (wanted, *(f for f in _FALLBACKS if f != wanted)):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_CONGESTION, name.encode())
        except OSError as exc:
            if name not in _warned:
                _warned.add(name)
                log.warning(
                    "TCP congestion control %r not usable here (%s); falling back", name, exc
                )
            continue
        return name
    return current_congestion(sock)


def current_congestion(sock: socket.socket) -> str:
    """The congestion control algorithm the socket uses."""
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, _TCP_CONGESTION, 16)
    except OSError:
        return "unknown"
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def tune_socket(
    sock: socket.socket, congestion: str, buffer_bytes: int | None, notsent_lowat: int | None = None
) -> str:
    """Apply TCP_NODELAY, buffer sizes, TCP_NOTSENT_LOWAT and congestion control.

    Returns the algorithm used. The low-water mark keeps most unsent data in the channel's
    own per-stream queue, where the scheduler sees it, instead of in a kernel buffer that
    makes a slow stream look as free as a fast one.
    """
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if notsent_lowat is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, notsent_lowat)
        except OSError as exc:
            log.debug("could not set TCP_NOTSENT_LOWAT: %s", exc)
    if buffer_bytes is not None:
        # The kernel caps these at net.core.{w,r}mem_max; a smaller grant is not an error.
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, buffer_bytes)
            except OSError as exc:
                log.debug("could not set socket buffer %d: %s", opt, exc)
    return set_congestion(sock, congestion)


_INFO = struct.Struct("=xB2xB19xI40xI28xI16xQ8xI4xI12xQ32xQQ")
"""From Linux struct tcp_info: ca_state@1, backoff@4, unacked@24, rtt@68, total_retrans@100,
bytes_acked@120, segs_out@136, notsent_bytes@144, delivery_rate@160, bytes_sent@200,
bytes_retrans@208."""


@dataclass(frozen=True, slots=True)
class TcpInfo:
    """The few TCP_INFO fields the transport uses."""

    rtt_s: float
    segs_out: int
    total_retrans: int
    bytes_sent: int
    bytes_retrans: int
    bytes_acked: int = 0
    unacked_segments: int = 0
    backoff: int = 0
    notsent_bytes: int = 0
    delivery_rate: float = 0.0
    """Bytes per second the kernel estimates this connection delivers."""


def tcp_info(sock: socket.socket) -> TcpInfo | None:
    """Kernel-measured RTT and retransmissions of ``sock``; None where unsupported."""
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 256)
    except OSError:
        return None
    if len(raw) < _INFO.size:
        return None
    (_ca, backoff, unacked, rtt_us, retrans, acked, segs_out, notsent, rate, sent, resent) = (
        _INFO.unpack_from(raw)
    )
    return TcpInfo(
        rtt_us / 1e6, segs_out, retrans, sent, resent, acked, unacked, backoff, notsent, rate
    )
