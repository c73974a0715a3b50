"""Cluster state: write throughput and latency through the SDK's stores against bare clients,
and the staleness of multi-region sync.

All in one run, on this machine:

- SQLite: ``SqliteStore.put`` against the bare ``sqlite3`` module doing one upsert per
  transaction on a file with the same pragmas (WAL, synchronous=NORMAL).
- etcd: a 3-member cluster on 127.0.0.1 (data on /dev/shm), ``EtcdStore`` (gRPC client)
  against the bare aetcd client on the same member; both sequential (latency p50/p99) and
  with 32 writers at once (throughput). Target: SDK >= 0.8x the bare client's writes/s.
- etcd security: ``EtcdStore`` (gRPC) on a member with TLS and client certificates, and on a
  member with a user and password (a token on every request), each against the same store on
  a plain member (one member each), sequential writes. No target: what they cost.
- Multi-region sync, 3 regions under the WAN emulator (the headline): each region a process
  (its own replica and HTTP endpoint) in its own network namespace, the regions joined
  pairwise by ``WanMesh`` links of 100 ms RTT; each region writes 20 VM records/s,
  anti-entropy every 1 s; staleness = merge time - write time, over every item every
  region merged. Target: p99 < 5 s. Baseline: the links' RTT measured with UDP echoes.
  Skipped (and said so) without root/TUN.
- The same 3 regions in one process, each link an in-process relay adding 50 ms each way
  (no namespaces needed). Baseline: the measured HTTP round trip over one link.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Figure, parse_args, report

from novacron_sdk.builtin.sqlite_store import SqliteStore

VALUE = b"x" * 256
CONCURRENCY = 32
ROUNDS = 3
SHM = "/dev/shm" if Path("/dev/shm").is_dir() else None


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _sequential(
    put: Callable[[str], Awaitable[object]], count: int
) -> tuple[float, list[float]]:
    """Writes/s and per-write latencies of ``count`` writes one after another."""
    latencies = []
    started = time.perf_counter()
    for i in range(count):
        t0 = time.perf_counter()
        await put(f"bench/seq/{i % 1000}")
        latencies.append(time.perf_counter() - t0)
    return count / (time.perf_counter() - started), latencies


async def _concurrent(put: Callable[[str], Awaitable[object]], count: int) -> float:
    """Writes/s of ``count`` writes by CONCURRENCY writers at once."""
    per_writer = count // CONCURRENCY

    async def writer(w: int) -> None:
        for i in range(per_writer):
            await put(f"bench/conc/{w}/{i % 100}")

    started = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(CONCURRENCY)))
    return per_writer * CONCURRENCY / (time.perf_counter() - started)


def _throughput_figures(
    system: str,
    sdk: tuple[float, list[float], float],
    bare: tuple[float, list[float], float],
    bare_name: str,
    target: bool,
) -> list[Figure]:
    (sdk_seq, sdk_lat, sdk_conc), (bare_seq, bare_lat, bare_conc) = sdk, bare
    figures = []
    for label, value, base in (
        ("sequential writes/s", sdk_seq, bare_seq),
        (f"writes/s, {CONCURRENCY} writers", sdk_conc, bare_conc),
    ):
        ratio = value / base
        figures.append(
            Figure(
                f"{system}: {label}",
                value,
                "writes/s",
                bare_name,
                base,
                target=">= 0.8x bare client" if target else None,
                met=(ratio >= 0.8) if target else None,
            )
        )
    for q in (0.5, 0.99):
        figures.append(
            Figure(
                f"{system}: write latency p{int(q * 100)}",
                _percentile(sdk_lat, q) * 1000,
                "ms",
                bare_name,
                _percentile(bare_lat, q) * 1000,
            )
        )
    return figures


async def bench_sqlite(count: int) -> list[Figure]:
    """SqliteStore against bare sqlite3 with the same pragmas."""
    with tempfile.TemporaryDirectory(dir=SHM) as tmp:
        store = SqliteStore({"path": Path(tmp) / "sdk.db"})

        async def sdk_put(key: str) -> object:
            return await store.put(key, VALUE)

        sdk_seq, sdk_lat = await _sequential(sdk_put, count)
        sdk_conc = await _concurrent(sdk_put, count)
        await store.close()

        db = sqlite3.connect(Path(tmp) / "bare.db", isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB, version INTEGER)")

        def upsert(key: str) -> None:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO kv VALUES (?, ?, 1) ON CONFLICT (key) DO UPDATE SET "
                "value = excluded.value, version = version + 1",
                (key, VALUE),
            )
            db.execute("COMMIT")

        async def bare_put(key: str) -> object:
            upsert(key)  # the bare module blocks the loop: that is what it offers
            return None

        bare_seq, bare_lat = await _sequential(bare_put, count)
        bare_conc = await _concurrent(bare_put, count)
        db.close()
    return _throughput_figures(
        "sqlite",
        (sdk_seq, sdk_lat, sdk_conc),
        (bare_seq, bare_lat, bare_conc),
        "bare sqlite3",
        target=False,
    )


async def bench_etcd(count: int) -> list[Figure]:
    """EtcdStore (gRPC) against the bare aetcd client, on a local 3-member cluster."""
    import aetcd  # type: ignore[import-untyped, unused-ignore]  # no type hints shipped

    from novacron_dwcp.consensus.etcd_store import EtcdStore
    from novacron_dwcp.consensus.local_cluster import LocalEtcdCluster

    with LocalEtcdCluster(members=3) as cluster:
        store = EtcdStore({"endpoints": cluster.client_urls, "client": "grpc"})
        member = cluster.members[0]
        bare = aetcd.Client(host="127.0.0.1", port=member.client_port)

        async def sdk_put(key: str) -> object:
            return await store.put(key, VALUE)

        async def bare_put(key: str) -> object:
            return await bare.put(key.encode(), VALUE)

        await sdk_put("warm")
        await bare_put("warm")
        # Best of alternating rounds: etcd shares the CPUs with the client, and a round that
        # a compaction or a neighbour slowed down should not decide the ratio.
        sdk_runs, bare_runs = [], []
        for _ in range(ROUNDS):
            sdk_runs.append(
                (*await _sequential(sdk_put, count), await _concurrent(sdk_put, count * 2))
            )
            bare_runs.append(
                (*await _sequential(bare_put, count), await _concurrent(bare_put, count * 2))
            )
        sdk_seq, sdk_lat, _ = max(sdk_runs, key=lambda r: r[0])
        bare_seq, bare_lat, _ = max(bare_runs, key=lambda r: r[0])
        sdk_conc = max(r[2] for r in sdk_runs)
        bare_conc = max(r[2] for r in bare_runs)
        await store.close()
        await bare.close()
    return _throughput_figures(
        "etcd 3 members",
        (sdk_seq, sdk_lat, sdk_conc),
        (bare_seq, bare_lat, bare_conc),
        "bare aetcd",
        target=True,
    )


async def bench_etcd_security(count: int) -> list[Figure]:
    """What TLS with client certificates, and a user with a token, cost an EtcdStore (gRPC
    client): one member each, against the same store on a plain member, in the same run."""
    from novacron_dwcp.consensus.etcd_store import EtcdStore
    from novacron_dwcp.consensus.local_cluster import LocalEtcdCluster, make_certificates

    try:
        import cryptography  # noqa: F401 - make_certificates needs it
    except ImportError:
        print("cryptography is not installed: etcd TLS figures skipped")
        return []
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory() as tmp:
        tls = make_certificates(Path(tmp))
        users = {"bench": ("bench-pass", "")}  # every key
        with (
            LocalEtcdCluster(members=1) as plain_cluster,
            LocalEtcdCluster(members=1, tls=tls) as tls_cluster,
            LocalEtcdCluster(members=1) as auth_cluster,
        ):
            auth_cluster.enable_auth("root-pass", users)
            plain = EtcdStore({"endpoints": plain_cluster.client_urls, "client": "grpc"})
            secured = {
                "TLS + client certificate": EtcdStore(
                    {
                        "endpoints": tls_cluster.client_urls,
                        "client": "grpc",
                        "ca_file": str(tls.ca_file),
                        "cert_file": str(tls.client_cert_file),
                        "key_file": str(tls.client_key_file),
                    }
                ),
                "user and password": EtcdStore(
                    {
                        "endpoints": auth_cluster.client_urls,
                        "client": "grpc",
                        "username": "bench",
                        "password": "bench-pass",
                    }
                ),
            }

            def putter(store: EtcdStore) -> Callable[[str], Awaitable[object]]:
                async def put(key: str) -> object:
                    return await store.put(key, VALUE)

                return put

            for label, store in secured.items():
                await store.put("warm", VALUE)
                await plain.put("warm", VALUE)
                runs, plain_runs = [], []
                for _ in range(ROUNDS):  # alternating, best of each
                    runs.append(await _sequential(putter(store), count))
                    plain_runs.append(await _sequential(putter(plain), count))
                rate, latencies = max(runs, key=lambda r: r[0])
                plain_rate, plain_latencies = max(plain_runs, key=lambda r: r[0])
                system = f"etcd 1 member, {label}"
                base = "same store, plain http, no user"
                figures += [
                    Figure(f"{system}: sequential writes/s", rate, "writes/s", base, plain_rate),
                    Figure(
                        f"{system}: write latency p50",
                        _percentile(latencies, 0.5) * 1000,
                        "ms",
                        base,
                        _percentile(plain_latencies, 0.5) * 1000,
                    ),
                ]
                await store.close()
            await plain.close()
    return figures


async def bench_sync(
    duration_s: float, rtt_s: float = 0.1, interval_s: float = 1.0
) -> list[Figure]:
    """Staleness of 3 regions over links of ``rtt_s`` round trip."""
    import httpx

    from novacron_dwcp.sync.node import EXCHANGE_PATH, SyncNode
    from novacron_dwcp.sync.relay import LinkRelay

    names = [f"region-{i}" for i in range(3)]
    nodes = [SyncNode(n, interval_s=interval_s) for n in names]
    ports = [int((await node.serve()).rsplit(":", 1)[1]) for node in nodes]
    links = []
    for i, node in enumerate(nodes):
        for j, name in enumerate(names):
            if i != j:
                link = await LinkRelay(ports[j], delay_s=rtt_s / 2).start()
                links.append(link)
                node.peers[name] = link.url
    for node in nodes:
        node.start()

    async def writer(index: int) -> None:
        replica = nodes[index].replica
        deadline = time.monotonic() + duration_s
        n = 0
        while time.monotonic() < deadline:
            replica.put("vms", f"vm-{index}-{n % 500}", {"host": names[index], "n": n})
            n += 1
            await asyncio.sleep(0.05)

    await asyncio.gather(*(writer(i) for i in range(3)))
    await asyncio.sleep(interval_s + 4 * rtt_s)  # let the last writes arrive
    async with httpx.AsyncClient() as client:
        rtts = []
        for _ in range(10):
            t0 = time.perf_counter()
            await client.post(
                links[0].url + EXCHANGE_PATH, json={"node": "probe", "seen": {}, "delta": {}}
            )
            rtts.append(time.perf_counter() - t0)
    samples = [s for node in nodes for s in node.staleness_s]
    digests = [node.replica.digest() for node in nodes]
    for node in nodes:
        await node.close()
    for link in links:
        await link.close()
    if not all(d == digests[0] for d in digests):
        raise SystemExit("multi-region sync did not converge: the staleness figures are void")
    p99 = _percentile(samples, 0.99)
    base = statistics.median(rtts)
    return [
        Figure(
            "sync 3 regions, in-process relays @100 ms RTT: staleness p99",
            p99,
            "s",
            "HTTP round trip (median)",
            base,
            target="< 5 s",
            met=p99 < 5.0,
            samples=[],
        ),
        Figure(
            "sync 3 regions, in-process relays @100 ms RTT: staleness p50",
            _percentile(samples, 0.5),
            "s",
            "HTTP round trip (median)",
            base,
        ),
        Figure("sync, in-process relays: items merged (samples)", float(len(samples)), "items"),
    ]


def bench_sync_wan(
    duration_s: float,
    rtt_s: float = 0.1,
    interval_s: float = 1.0,
    *,
    rate_bps: float | None = None,
    loss: float = 0.0,
) -> list[Figure]:
    """Staleness of 3 regions, each a process in its own namespace, over the WAN mesh."""
    import subprocess

    from novacron_sdk.testing.wan import LinkProfile, WanMesh, unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        print(f"WAN emulator unavailable ({reason}): the emulated 3-region figures are skipped")
        return []
    script = str(Path(__file__).resolve().parent / "_sync_region.py")
    port = 8471
    names = [f"region-{i}" for i in range(3)]
    profile = LinkProfile(rate_bps=rate_bps, delay_s=rtt_s / 2, loss=loss)
    with WanMesh(names, profile, seed=1) as mesh:
        procs = []
        for name in names:
            peers = [f"--peer={p}=http://{mesh.address(p)}:{port}" for p in names if p != name]
            procs.append(
                mesh.python(
                    name,
                    script,
                    *("--name", name, "--listen", f"{mesh.address(name)}:{port}", *peers),
                    *("--seconds", str(duration_s), "--interval", str(interval_s)),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        results = []
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise SystemExit("a sync region under the WAN emulator exited early")
            results.append(json.loads(line))
        for proc in procs:
            proc.communicate(timeout=30)
        # Baseline: the round trip of the emulated links themselves, over real UDP sockets.
        rtts = [
            r for a, b in ((0, 1), (1, 2), (2, 0)) for r in mesh.udp_rtts(names[a], names[b])[1]
        ]
    if len({r["digest"] for r in results}) != 1:
        raise SystemExit("regions under the WAN emulator did not converge: figures void")
    samples = [s for r in results for s in r["staleness_s"]]
    p99 = _percentile(samples, 0.99)
    base = statistics.median(rtts)
    label = f"sync 3 regions, WAN emulator @{rtt_s * 1e3:g} ms RTT"
    if rate_bps is not None or loss:
        label = f"sync 3 regions, WAN emulator @{profile.describe()} each way"
    return [
        Figure(
            f"{label}: staleness p99",
            p99,
            "s",
            "link RTT, UDP echo (median)",
            base,
            target="< 5 s",
            met=p99 < 5.0,
        ),
        Figure(
            f"{label}: staleness p50",
            _percentile(samples, 0.5),
            "s",
            "link RTT, UDP echo (median)",
            base,
        ),
        Figure(
            f"{label}: staleness max",
            max(samples),
            "s",
            "anti-entropy interval",
            interval_s,
        ),
        Figure(f"{label}: items merged (samples)", float(len(samples)), "items"),
    ]


def bench_sync_partition(
    rtt_s: float = 0.1, *, interval_s: float = 1.0, timeout_s: float = 5.0, cut_s: float = 6.0
) -> list[Figure]:
    """3 regions under the WAN mesh, one cut off by the emulator for ``cut_s`` while all write:
    staleness between the connected regions, and how long convergence takes after healing."""
    from novacron_dwcp.sync.emulated import EmulatedRegions
    from novacron_sdk.testing.wan import LinkProfile, unavailable_reason

    if unavailable_reason() is not None:
        return []  # bench_sync_wan already said why
    names = ["region-0", "region-1", "region-2"]
    profile = LinkProfile(delay_s=rtt_s / 2)
    with EmulatedRegions(names, profile, interval_s=interval_s, timeout_s=timeout_s) as regions:

        def write_for(seconds: float) -> None:
            end, n = time.monotonic() + seconds, 0
            while time.monotonic() < end:
                for name in names:
                    regions.call(name, "put", map="vms", key=f"{name}-{n % 200}", value=n)
                n += 1
                time.sleep(0.1)  # 10 writes/s per region

        write_for(3.0)
        regions.partition(names[2])
        write_for(cut_s)
        regions.heal()
        healed = time.monotonic()
        while len({json.dumps(regions.digest(n), sort_keys=True) for n in names}) != 1:
            if time.monotonic() - healed > 120:
                raise SystemExit("regions did not converge within 120 s of healing")
            time.sleep(0.05)
        converge_s = time.monotonic() - healed
        status = {name: regions.call(name, "status") for name in names}
    connected = [
        s
        for here, there in ((names[0], names[1]), (names[1], names[0]))
        for s in status[here]["staleness_by_origin"].get(there, [])
    ]
    cut_off = [s for n in names[:2] for s in status[names[2]]["staleness_by_origin"].get(n, [])]
    label = f"sync 3 regions, WAN emulator @{rtt_s * 1e3:g} ms RTT, region-2 cut {cut_s:g} s"
    p99 = _percentile(connected, 0.99)
    return [
        Figure(
            f"{label}: staleness p99 between the connected regions",
            p99,
            "s",
            "anti-entropy interval",
            interval_s,
            target="< 5 s",
            met=p99 < 5.0,
        ),
        Figure(
            f"{label}: staleness p99 of what the cut-off region merged",
            _percentile(cut_off, 0.99),
            "s",
            "length of the cut",
            cut_s,
        ),
        Figure(
            f"{label}: convergence after healing",
            converge_s,
            "s",
            "interval + exchange timeout",
            interval_s + timeout_s,
        ),
    ]


async def main_async(quick: bool, *, sync_only: bool = False) -> list[Figure]:
    """Every figure of this benchmark (only the sync staleness ones with ``sync_only``)."""
    from novacron_dwcp.consensus.local_cluster import etcd_binary

    count = 1000 if quick else 5000
    figures = [] if sync_only else await bench_sqlite(count)
    if sync_only:
        pass
    elif etcd_binary() is None:
        print("etcd is not installed (apt-get install etcd-server): etcd figures skipped")
    else:
        figures += await bench_etcd(count)
        figures += await bench_etcd_security(count // 2)
    figures += await asyncio.to_thread(bench_sync_wan, 8.0 if quick else 30.0)
    if not quick:
        lossy = functools.partial(bench_sync_wan, 30.0, rate_bps=10e6, loss=0.01)
        figures += await asyncio.to_thread(lossy)
        figures += await asyncio.to_thread(bench_sync_partition)
    figures += await bench_sync(duration_s=8.0 if quick else 30.0)
    return figures


def main() -> int:
    """Run and report."""

    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--sync-only", action="store_true", help="only the multi-region staleness figures"
        )

    args = parse_args(__doc__ or "state benchmark", extra=options)
    figures = asyncio.run(main_async(args.quick, sync_only=args.sync_only))
    return report(
        "state", "Cluster state: SDK stores vs bare clients, sync staleness", args, figures
    )


if __name__ == "__main__":
    raise SystemExit(main())
