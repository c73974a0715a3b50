"""Transport goodput: plain TCP (cubic, BBR, N streams) vs the DWCP multi-stream transport.

Everything is measured in the same run, each sender and receiver in its own process:

- loopback (127.0.0.1): iperf3 as the machine's ceiling, one plain TCP stream with cubic and
  with BBR, N plain cubic streams, and DWCP (default settings: datacenter mode). Target:
  DWCP >= 1 GB/s.
- through the WAN emulator (two namespaces, src/novacron_sdk/testing/wan) at the issue's
  profiles: 100 Mbit/s 20 ms; 100 Mbit/s 100 ms 0.5% loss (the target profile); 1 Gbit/s
  50 ms 0.1% loss, or the emulator's measured ceiling when it cannot carry 1 Gbit/s; a
  cellular profile whose rate follows a real 3G trace. Targets on the 100 ms profile: DWCP
  >= 85% of the link rate, >= 5x one cubic stream, >= one BBR stream.

Goodput is payload bytes at the receiver, from the first byte (plain TCP) or the channel's
start (DWCP) to the last. ``--quick`` runs loopback and the target profile only, without its
N-stream baseline (under a minute). Needs root and /dev/net/tun for the emulator profiles
(skipped with the reason otherwise) and iperf3 for the ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Figure, parse_args, report

from novacron_sdk.testing.wan import (
    LinkProfile,
    Trace,
    WanEmulator,
    symmetric,
    unavailable_reason,
)

PY = sys.executable
TCPBENCH = "novacron_sdk.testing.wan.tcpbench"
TRACE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "bandwidth" / "pensieve-train"
CELLULAR_TRACE = "bus.ljansbakken-oslo-report.2010-09-28_1407CEST.log"
FRAME = 1 << 20
PLAIN_STREAMS = 8


# -- the DWCP probe processes ------------------------------------------------------------------


async def _dwcp_sink(host: str, settings: dict[str, Any]) -> None:
    from novacron_dwcp.transport.multistream import MultiStreamTransport
    from novacron_sdk.errors import TransportError
    from novacron_sdk.transport.interface import Channel, Endpoint

    done: asyncio.Future[dict[str, float]] = asyncio.get_running_loop().create_future()

    async def handler(channel: Channel) -> None:
        # From the channel's start, not its first frame: a frame is only delivered whole,
        # so its first byte arrived earlier than its delivery.
        total, first, last, end = 0, time.monotonic(), 0.0, ""
        try:
            while True:
                frame = await channel.recv()
                total += len(frame)
                last = time.monotonic()
        except TransportError as exc:
            end = str(exc)
        done.set_result({"bytes": float(total), "seconds": last - first, "end": end})

    listener = await MultiStreamTransport(settings).listen(Endpoint(host=host), handler)
    print(f"READY {listener.endpoint.port}", flush=True)
    result = await done
    await listener.close()
    print(json.dumps(result), flush=True)


async def _dwcp_source(host: str, port: int, seconds: float, settings: dict[str, Any]) -> None:
    from novacron_dwcp.transport.multistream import MultiStreamChannel, MultiStreamTransport
    from novacron_sdk.transport.interface import Endpoint

    channel = await MultiStreamTransport(settings).connect(Endpoint(host=host, port=port))
    assert isinstance(channel, MultiStreamChannel)
    frame = os.urandom(FRAME)
    deadline = time.monotonic() + seconds
    counts = []
    next_sample = time.monotonic()
    while time.monotonic() < deadline:
        await channel.send(frame)
        if time.monotonic() >= next_sample:
            counts.append(channel.stats().streams)
            next_sample += 0.5
    await channel.drain()
    info = {
        "mode": channel.ex_mode,
        "congestion": channel.resolved.congestion,
        "streams": counts,
        "resends": channel.resends,
    }
    await channel.close()
    print(json.dumps(info), flush=True)


def _probe_main(argv: Sequence[str]) -> None:
    role, host = argv[0], argv[1]
    settings = json.loads(argv[-1])
    if role == "dwcp-sink":
        asyncio.run(_dwcp_sink(host, settings))
    else:
        asyncio.run(_dwcp_source(host, int(argv[2]), float(argv[3]), settings))


# -- running probes on loopback or in the emulator's hosts -------------------------------------

Spawn = Callable[[str, Sequence[str]], "subprocess.Popen[str]"]


def _loopback_spawn(side: str, argv: Sequence[str]) -> subprocess.Popen[str]:
    cpu = {"a": 0, "b": 1}[side] % (os.cpu_count() or 1)
    return subprocess.Popen(
        ["taskset", "-c", str(cpu), *argv] if shutil.which("taskset") else list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _emulator_spawn(emu: WanEmulator) -> Spawn:
    def spawn(side: str, argv: Sequence[str]) -> subprocess.Popen[str]:
        host = "a" if side == "a" else "b"
        return emu.popen(host, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    return spawn


def _pair(
    spawn: Spawn, sink: Sequence[str], source: Callable[[int], Sequence[str]], timeout: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    receiver = spawn("b", sink)
    assert receiver.stdout is not None
    ready = receiver.stdout.readline()
    if not ready.startswith("READY"):
        receiver.kill()
        msg = (
            f"receiver did not start: {ready!r} {receiver.stderr.read() if receiver.stderr else ''}"
        )
        raise SystemExit(msg)
    sender = spawn("a", source(int(ready.split()[1])))
    out, err = sender.communicate(timeout=timeout)
    if sender.returncode != 0:
        receiver.kill()
        msg = f"sender failed: {err}"
        raise SystemExit(msg)
    got, err = receiver.communicate(timeout=60)
    if receiver.returncode != 0:
        msg = f"receiver failed: {err}"
        raise SystemExit(msg)
    return json.loads(got.strip().splitlines()[-1]), json.loads(out.strip().splitlines()[-1])


def plain_tcp(spawn: Spawn, host: str, seconds: float, cc: str, streams: int) -> float:
    """Goodput (bit/s) of ``streams`` plain TCP connections with congestion control ``cc``."""
    common = ["--host", host, "--streams", str(streams)]
    print(f"  plain tcp {cc} x{streams} {host} {seconds}s", file=sys.stderr)
    got, sent = _pair(
        spawn,
        [PY, "-m", TCPBENCH, "sink", *common],
        lambda port: [
            PY,
            "-m",
            TCPBENCH,
            "source",
            *common,
            "--port",
            str(port),
            "--seconds",
            str(seconds),
            "--cc",
            cc,
        ],
        seconds + 60,
    )
    if sent["cc"] != cc:
        msg = f"asked for {cc}, the kernel used {sent['cc']}"
        raise SystemExit(msg)
    return 8 * got["bytes"] / got["seconds"]


def dwcp(
    spawn: Spawn, host: str, seconds: float, settings: dict[str, Any]
) -> tuple[float, dict[str, Any]]:
    """Goodput (bit/s) of the DWCP transport, and what it reported about itself."""
    me, blob = str(Path(__file__).resolve()), json.dumps(settings)
    print(f"  dwcp {host} {seconds}s", file=sys.stderr)
    got, info = _pair(
        spawn,
        [PY, me, "--probe", "dwcp-sink", host, blob],
        lambda port: [PY, me, "--probe", "dwcp-source", host, str(port), str(seconds), blob],
        seconds + 90,
    )
    return 8 * got["bytes"] / got["seconds"], info


def iperf3(spawn: Spawn, host: str, seconds: float, streams: int = 1) -> float | None:
    """iperf3 goodput (bit/s), or None when iperf3 is not installed."""
    if shutil.which("iperf3") is None:
        return None
    port = "5299"
    server = spawn("b", ["iperf3", "-s", "-1", "-B", host, "-p", port])
    time.sleep(0.3)
    client = spawn(
        "a", ["iperf3", "-c", host, "-p", port, "-t", str(seconds), "-P", str(streams), "-J"]
    )
    out, _ = client.communicate(timeout=seconds + 30)
    server.communicate(timeout=30)
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"])


# -- the benchmark -------------------------------------------------------------------------------


@dataclass
class Profile:
    """One emulated path."""

    name: str
    up: LinkProfile
    down: LinkProfile
    link_bps: float
    targets: bool = False
    note: str = ""


def _profiles(quick: bool, ceiling_bps: float | None) -> list[Profile]:
    target = Profile(
        "100M 100ms 0.5%", *symmetric(100e6, 0.100, 0.005), link_bps=100e6, targets=True
    )
    if quick:
        return [target]
    gig = 1e9
    note = ""
    if ceiling_bps is not None and ceiling_bps < 1.1e9:
        gig = round(0.8 * ceiling_bps / 50e6) * 50e6
        note = f"emulator ceiling {ceiling_bps / 1e6:.0f} Mbit/s: run at {gig / 1e6:.0f} Mbit/s"
    profiles = [
        Profile("100M 20ms", *symmetric(100e6, 0.020), link_bps=100e6),
        target,
        Profile(
            f"{gig / 1e6:.0f}M 50ms 0.1%", *symmetric(gig, 0.050, 0.001), link_bps=gig, note=note
        ),
    ]
    trace_path = TRACE_DIR / CELLULAR_TRACE
    if trace_path.exists():
        trace = Trace.load(trace_path, scale=4.0)
        up = LinkProfile(delay_s=0.04, loss=0.0, trace=trace)
        mean = trace.bits_between(0, 25) / 25
        profiles.append(
            Profile(
                "cellular trace x4, 80ms",
                up,
                LinkProfile(20e6, 0.04),
                link_bps=mean,
                note=f"{CELLULAR_TRACE} x4; link rate = trace mean over the first 25 s",
            )
        )
    return profiles


def _vs(name: str, value: float, base_name: str, base: float, unit_div: float, **kw: Any) -> Figure:
    return Figure(name, value / unit_div, "Mbit/s", base_name, base / unit_div, **kw)


def run_loopback(seconds: float, figures: list[Figure], extra: dict[str, Any]) -> None:
    host = "127.0.0.1"
    spawn: Spawn = _loopback_spawn
    ceiling = iperf3(spawn, host, seconds)
    cubic = plain_tcp(spawn, host, seconds, "cubic", 1)
    bbr = plain_tcp(spawn, host, seconds, "bbr", 1)
    many = plain_tcp(spawn, host, seconds, "cubic", 4)
    goodput, info = dwcp(spawn, host, seconds, {})
    extra["loopback_dwcp"] = info
    mb = 1e6
    if ceiling:
        figures.append(
            _vs(
                "loopback: iperf3 (cubic) = machine ceiling",
                ceiling,
                "plain TCP cubic x1",
                cubic,
                mb,
            )
        )
    figures += [
        _vs("loopback: plain TCP bbr x1", bbr, "plain TCP cubic x1", cubic, mb),
        _vs("loopback: plain TCP cubic x4", many, "plain TCP cubic x1", cubic, mb),
        _vs(
            f"loopback: DWCP ({info['mode']}, {info['congestion']})",
            goodput,
            "plain TCP cubic x1",
            cubic,
            mb,
        ),
        Figure(
            "loopback: DWCP goodput",
            goodput / 8e9,
            "GB/s",
            "iperf3 ceiling",
            ceiling / 8e9 if ceiling else None,
            target=">= 1 GB/s",
            met=goodput >= 8e9,
        ),
    ]


def emulator_ceiling(seconds: float) -> float | None:
    """Most the emulator carries (unlimited link, no delay), measured with 4 iperf3 streams."""
    with WanEmulator(LinkProfile()) as emu:
        return iperf3(_emulator_spawn(emu), emu.address("b"), seconds, streams=4)


def run_profile(
    profile: Profile,
    seconds: float,
    figures: list[Figure],
    extra: dict[str, Any],
    *,
    with_many: bool = True,
) -> None:
    with WanEmulator(profile.up, profile.down, seed=1) as emu:
        spawn, host = _emulator_spawn(emu), emu.address("b")
        cubic = plain_tcp(spawn, host, seconds, "cubic", 1)
        bbr = plain_tcp(spawn, host, seconds, "bbr", 1)
        many = plain_tcp(spawn, host, seconds, "cubic", PLAIN_STREAMS) if with_many else None
        goodput, info = dwcp(spawn, host, seconds, {})
        extra[f"{profile.name}: dwcp"] = info
        extra[f"{profile.name}: emulator cpu s"] = emu.stats("a").cpu_s + emu.stats("b").cpu_s
    p, link, mb = profile.name, profile.link_bps, 1e6
    label = f"link {link / mb:.3g} Mbit/s"
    t = profile.targets
    figures += [
        _vs(f"{p}: plain TCP cubic x1", cubic, label, link, mb),
        _vs(f"{p}: plain TCP bbr x1", bbr, label, link, mb),
        *([_vs(f"{p}: plain TCP cubic x{PLAIN_STREAMS}", many, label, link, mb)] if many else []),
        _vs(
            f"{p}: DWCP ({info['mode']}, {info['congestion']})",
            goodput,
            label,
            link,
            mb,
            target=">= 85% of link" if t else None,
            met=goodput >= 0.85 * link if t else None,
        ),
        _vs(
            f"{p}: DWCP vs one cubic stream",
            goodput,
            "plain TCP cubic x1",
            cubic,
            mb,
            target=">= 5x" if t else None,
            met=goodput >= 5 * cubic if t else None,
        ),
        _vs(
            f"{p}: DWCP vs one BBR stream",
            goodput,
            "plain TCP bbr x1",
            bbr,
            mb,
            target=">= 1x" if t else None,
            met=goodput >= bbr if t else None,
        ),
    ]
    if profile.note:
        extra[f"{p}: note"] = profile.note


def _extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=None, help="per WAN measurement")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module docstring."""
    args = parse_args(__doc__ or "", argv, _extra)
    figures: list[Figure] = []
    extra: dict[str, Any] = {}
    run_loopback(2.0 if args.quick else 5.0, figures, extra)
    reason = unavailable_reason()
    if reason is not None:
        extra["emulator"] = f"skipped: {reason}"
    else:
        ceiling = None if args.quick else emulator_ceiling(4.0)
        if ceiling is not None:
            extra["emulator ceiling Mbit/s (unlimited link, iperf3 x4)"] = ceiling / 1e6
            figures.append(
                Figure("emulator ceiling (iperf3 x4, no shaping)", ceiling / 1e6, "Mbit/s")
            )
        # --quick: longer transfers on the one target profile, without the N-stream baseline
        # (loopback has it), so BBR's start-up does not dominate and it stays under a minute.
        seconds = args.seconds or (9.0 if args.quick else 20.0)
        for profile in _profiles(args.quick, ceiling):
            try:
                run_profile(profile, seconds, figures, extra, with_many=not args.quick)
            except (SystemExit, subprocess.TimeoutExpired) as exc:
                # One broken profile must not hide the others' figures.
                extra[f"{profile.name}: failed"] = str(exc)
                print(f"profile {profile.name} failed: {exc}", file=sys.stderr)
    return report("transport", "Transport goodput (payload, receiver side)", args, figures, extra)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--probe":
        _probe_main(sys.argv[2:])
    else:
        raise SystemExit(main())
