"""Round trips over real UDP sockets, to run inside the WAN emulator's hosts or on loopback.

``python -m novacron_sdk.testing.wan.udpprobe echo --host H [--port P]`` prints
``READY <port>`` and sends every datagram back to its sender until killed.
``... probe --host H --port P --count N --interval S [--wait S]`` sends N numbered datagrams,
one every S seconds, collects the echoes until ``--wait`` seconds after the last send, and
prints one JSON line: ``{"sent": N, "rtts": [seconds, ...]}`` (lost probes are missing).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import select
import socket
import struct
import sys
import time

_PROBE = struct.Struct("!Id")


def echo(host: str, port: int) -> None:
    """Echo datagrams forever."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, port))
        sys.stdout.write(f"READY {sock.getsockname()[1]}\n")
        sys.stdout.flush()
        while True:
            data, peer = sock.recvfrom(2048)
            sock.sendto(data, peer)


def probe(host: str, port: int, count: int, interval_s: float, wait_s: float) -> dict[str, object]:
    """Send ``count`` probes and time the echoes that come back."""
    rtts: dict[int, float] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((host, port))
        started = time.monotonic()
        sent = 0
        end = started + (count - 1) * interval_s + wait_s
        while (now := time.monotonic()) < end and len(rtts) < count:
            if sent < count and now >= started + sent * interval_s:
                # A refused send (ICMP unreachable) just counts as a lost probe.
                with contextlib.suppress(OSError):
                    sock.send(_PROBE.pack(sent, now))
                sent += 1
                continue
            due = started + sent * interval_s if sent < count else end
            ready, _, _ = select.select([sock], [], [], max(0.0, min(due, end) - now))
            if ready:
                try:
                    data = sock.recv(2048)
                except OSError:
                    continue
                seq, sent_at = _PROBE.unpack_from(data)
                rtts.setdefault(seq, time.monotonic() - sent_at)
    return {"sent": sent, "rtts": [rtts[k] for k in sorted(rtts)]}


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("role", choices=["echo", "probe"])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--wait", type=float, default=1.0, help="after the last send")
    args = parser.parse_args(argv)
    if args.role == "echo":
        echo(args.host, args.port)
    else:
        result = probe(args.host, args.port, args.count, args.interval, args.wait)
        sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
