"""One sync region as a process driven over stdin/stdout, for tests under the WAN emulator.

``python -m novacron_dwcp.sync.region_process --name N --listen HOST:PORT --peer M=URL ...``
serves the exchange endpoint, starts anti-entropy, prints ``{"ready": url}`` and then
answers one JSON line per request line until stdin closes:

- ``{"op": "put", "map": m, "key": k, "value": v}`` / ``{"op": "delete", "map", "key"}`` /
  ``{"op": "add", "set": s, "element": e}``: ``{"ts": [wall_ms, logical, node]}``;
- ``{"op": "remove", "set": s, "element": e}``: ``{"removed": n}``;
- ``{"op": "digest"}``: ``{"digest": ...}`` (see ``Replica.digest``);
- ``{"op": "status"}``: ``{"exchanges": n, "failures": {peer: n}, "staleness_s": [...],
  "staleness_by_origin": {region: [...]}}``.

An unknown op or a bad request answers ``{"error": "..."}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

from novacron_dwcp.sync.node import SyncNode


def _status(node: SyncNode) -> dict[str, Any]:
    return {
        "exchanges": node.exchanges,
        "failures": node.failures,
        "staleness_s": node.staleness_s,
        "staleness_by_origin": node.staleness_by_origin,
    }


_OPS: dict[str, Callable[[SyncNode, dict[str, Any]], dict[str, Any]]] = {
    "put": lambda n, r: {"ts": n.replica.put(r["map"], r["key"], r["value"]).encode()},
    "delete": lambda n, r: {"ts": n.replica.delete(r["map"], r["key"]).encode()},
    "add": lambda n, r: {"ts": n.replica.add(r["set"], r["element"]).encode()},
    "remove": lambda n, r: {"removed": n.replica.remove(r["set"], r["element"])},
    "digest": lambda n, _: {"digest": n.replica.digest()},
    "status": lambda n, _: _status(n),
}


def handle(node: SyncNode, request: dict[str, Any]) -> dict[str, Any]:
    """Apply one request to ``node``; the answer."""
    op = request.get("op")
    action = _OPS.get(op) if isinstance(op, str) else None
    if action is None:
        return {"error": f"unknown op {op!r}: use one of {', '.join(_OPS)}"}
    try:
        return action(node, request)
    except (KeyError, ValueError, TypeError) as exc:
        return {"error": f"bad {op} request {request!r}: {exc!r}"}


async def run(args: argparse.Namespace) -> None:
    """Serve and sync; answer requests from stdin until it closes."""
    peers = dict(item.split("=", 1) for item in args.peer)
    node = SyncNode(args.name, peers, interval_s=args.interval, timeout_s=args.timeout)
    host, port = args.listen.rsplit(":", 1)
    url = await node.serve(host, int(port))
    node.start()
    sys.stdout.write(json.dumps({"ready": url}) + "\n")
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            try:
                request = json.loads(line)
            except ValueError as exc:
                answer: dict[str, Any] = {"error": f"not JSON: {exc}"}
            else:
                answer = handle(node, request)
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
    finally:
        await node.close()


def main(argv: list[str] | None = None) -> None:
    """Parse options and run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--listen", required=True, help="host:port")
    parser.add_argument("--peer", action="append", default=[], help="name=http://host:port")
    parser.add_argument("--interval", type=float, default=1.0, help="anti-entropy period (s)")
    parser.add_argument("--timeout", type=float, default=5.0, help="exchange timeout (s)")
    asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
