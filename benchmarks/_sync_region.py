"""One sync region in its own process, for benchmarks/state.py under the WAN emulator.

Serves the exchange endpoint on ``--listen``, waits for its first successful exchange with
every peer, writes ``--rate`` VM records per second for ``--seconds``, waits ``--settle``
seconds, then prints one JSON line (staleness samples, digest hash, items) and keeps
serving until its stdin closes, so that slower peers can still finish their exchanges.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time

from novacron_dwcp.sync.node import SyncNode


async def run(args: argparse.Namespace) -> None:
    """Serve, wait for peers, write, settle, report, serve until stdin closes."""
    peers = dict(item.split("=", 1) for item in args.peer)
    node = SyncNode(args.name, peers, interval_s=args.interval)
    host, port = args.listen.rsplit(":", 1)
    await node.serve(host, int(port))
    deadline = time.monotonic() + 60
    while await node.sync_once() < len(peers):
        if time.monotonic() > deadline:
            sys.exit(f"{args.name}: peers {list(peers)} unreachable for 60 s")
        await asyncio.sleep(0.2)
    node.start()
    end = time.monotonic() + args.seconds
    n = 0
    while time.monotonic() < end:
        node.replica.put("vms", f"{args.name}-{n % 500}", {"host": args.name, "n": n})
        n += 1
        await asyncio.sleep(1 / args.rate)
    await asyncio.sleep(args.settle)
    digest = json.dumps(node.replica.digest(), sort_keys=True).encode()
    print(
        json.dumps(
            {
                "name": args.name,
                "staleness_s": node.staleness_s,
                "digest": hashlib.sha256(digest).hexdigest(),
                "items": len(node.replica.map("vms").items()),
                "writes": n,
            }
        ),
        flush=True,
    )
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await node.close()


def main() -> None:
    """Parse options and run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--listen", required=True, help="host:port")
    parser.add_argument("--peer", action="append", default=[], help="name=http://host:port")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--settle", type=float, default=3.0)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
