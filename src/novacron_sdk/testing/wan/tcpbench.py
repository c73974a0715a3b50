"""Plain TCP goodput probes (source and sink) to run inside the emulator's hosts or on loopback.

``python -m novacron_sdk.testing.wan.tcpbench sink --host H [--port P] --streams N`` prints
``READY <port>``, accepts N connections, reads each to EOF and prints one JSON line:
``{"bytes": ..., "seconds": ...}`` (first byte to last byte, over all streams).
``... source --host H --port P --streams N --seconds T --cc cubic`` sends for T seconds on N
connections with the given congestion control and prints what it sent.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time

_CHUNK = memoryview(b"\x5a" * (1 << 20))
_TCP_CONGESTION = getattr(socket, "TCP_CONGESTION", 13)


def sink(host: str, port: int, streams: int, buffer_bytes: int | None) -> dict[str, float]:
    """Accept ``streams`` connections and count what arrives until every one is closed."""
    with socket.create_server((host, port)) as server:
        if buffer_bytes:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
        sys.stdout.write(f"READY {server.getsockname()[1]}\n")
        sys.stdout.flush()
        totals = [0] * streams
        first = [float("inf")] * streams
        last = [0.0] * streams

        def drain(index: int, conn: socket.socket) -> None:
            buf = bytearray(1 << 20)
            with conn:
                while n := conn.recv_into(buf):
                    now = time.monotonic()
                    if not totals[index]:
                        first[index] = now
                    totals[index] += n
                    last[index] = now

        threads = []
        for index in range(streams):
            conn, _ = server.accept()
            thread = threading.Thread(target=drain, args=(index, conn), daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join()
    seconds = max(last) - min(first) if sum(totals) else 0.0
    return {"bytes": float(sum(totals)), "seconds": seconds}


def source(
    host: str, port: int, streams: int, seconds: float, *, cc: str, buffer_bytes: int | None
) -> dict[str, float | str]:
    """Send as fast as TCP allows on ``streams`` connections for ``seconds``."""
    sent = [0] * streams
    used: list[str] = []
    deadline = time.monotonic() + seconds

    def pump(index: int) -> None:
        with socket.socket() as sock:
            if buffer_bytes:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_bytes)
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_CONGESTION, cc.encode())
            used.append(
                sock.getsockopt(socket.IPPROTO_TCP, _TCP_CONGESTION, 16).strip(b"\0").decode()
            )
            sock.connect((host, port))
            while time.monotonic() < deadline:
                sent[index] += sock.send(_CHUNK)

    threads = [threading.Thread(target=pump, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"bytes": float(sum(sent)), "seconds": seconds, "cc": ",".join(sorted(set(used)))}


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("role", choices=["sink", "source"])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--cc", default="cubic")
    parser.add_argument("--buffer", type=int, default=0, help="SO_SNDBUF/SO_RCVBUF; 0 = auto")
    args = parser.parse_args(argv)
    buffer_bytes = args.buffer or None
    if args.role == "sink":
        result: dict[str, object] = dict(sink(args.host, args.port, args.streams, buffer_bytes))
    else:
        result = dict(
            source(
                args.host,
                args.port,
                args.streams,
                args.seconds,
                cc=args.cc,
                buffer_bytes=buffer_bytes,
            )
        )
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
