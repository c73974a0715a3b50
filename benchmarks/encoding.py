"""DWCP page encoding on real guest memory: bytes and MB/s of zstd-1, zstd-3, lz4 and the chain.

The corpus (``scripts/build_memory_corpus.py``) holds consecutive RAM images of tiny Linux
guests under QEMU. For every workload, all in the same run and on the same batches (256
pages of 4 KiB by default, the migration engine's batch size):

- "first": every page of image 0, as the first pre-copy round of a migration sends it;
- "changes": for each later image N, the pages that differ from image N-1 (a dirty round).
  The chain sees image 0 and every earlier round first, as it would in a migration; the
  stateless codecs compress each batch alone.

The chain runs seven times: without a bandwidth estimate ("dwcp": zstd-1, the batch split
across the default threads), the same limited to one thread ("dwcp 1 thread"), the same with
the numpy fallback instead of the native hot path ("dwcp 1 thread numpy"), told the link
runs at 100 Mbit/s ("dwcp 100Mbit/s": the selector then prefers the long-window streams,
whose history spans batches, at level 3 when the link leaves time for it), told it runs at
10 Mbit/s, an internet link ("dwcp 10Mbit/s": the streams at level 15, which compress faster
than such a link sends; not run with ``--quick``, it takes about 40 s a repetition), and told
it runs at 10 Gbit/s ("dwcp 10Gbit/s": faster than zstd-1 on these cores, so the selector moves to
its fast end; not a target, it shows what the chain costs when it must keep up with a fast
link). "dwcp + boot files" is the chain with both ends given the guest's kernel and initrd
as reference files (a libvirt stream migration over DWCP does the same for a direct-boot
guest): RAM pages equal to a page of them go as references. "xor+zstd-1" XORs each page with
its previous version and compresses that, the reference the issue quotes. "zstd-1 N threads"
is zstd-1 with the chain's thread budget (each batch cut into N frames compressed at once):
the baseline of the chain's speed; "dwcp 1 thread" is judged against single-threaded zstd-1.
Every codec's payloads are decoded and checked against the input. Times are the best of
``--repeat`` runs (the machine may be shared); the ratio to the baseline in every run is
printed after the table and written to the JSON ("ratio_per_run"), and "encode per
CPU-second" (input bytes per CPU-second of all threads, against single-threaded zstd-1) shows
the work done whatever the threads got from a busy machine. "dwcp 1 thread time in ..." splits
the one-thread chain's encode time (its fastest repetition) by stage, each next to zstd-1's
whole encode time: literal compression, classification, page store and the rest (where the
throughput target is lost). Targets (issue 9): chain bytes
<= 0.35x zstd-1 on changes and <= 0.85x on first images (judged for "dwcp", "dwcp 100Mbit/s",
"dwcp 10Mbit/s" and "dwcp + boot files"); chain encode throughput >= zstd-1's with the same
threads ("dwcp" and "dwcp 1 thread"). When QEMU is missing the corpus cannot be built: the
benchmark says so and reports nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import lz4.block
import numpy as np
import zstandard
from _common import Figure, parse_args, report
from corpus_initramfs import WORKLOADS

from novacron_dwcp.encoding.compress import default_threads
from novacron_dwcp.encoding.native import AVAILABLE as NATIVE
from novacron_sdk.encoding.interface import PageBatch

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "benchmarks" / "corpus"
BUILDER = ROOT / "scripts" / "build_memory_corpus.py"
PAGE = 4096
# The chain's default thread budget; zstd-1 gets the same for the throughput target.
THREADS = default_threads()
PARALLEL_ZSTD = f"zstd-1 {THREADS} threads"
BOOT_FILES = "dwcp + boot files"
SLOW_LINK = "dwcp 10Mbit/s"
CODECS = (
    "zstd-1", PARALLEL_ZSTD, "zstd-3", "lz4", "xor+zstd-1", "dwcp", "dwcp 1 thread",
    "dwcp 1 thread numpy", "dwcp 100Mbit/s", SLOW_LINK, "dwcp 10Gbit/s", BOOT_FILES,
)  # fmt: skip
# The chain without a bandwidth estimate (zstd-1 in parallel chunks), the same on one thread
# (how much the threads bring), the same without the native hot path (the numpy fallback;
# same bytes, shows what the extension brings), and told that the link runs at 100 Mbit/s,
# where bytes matter more than CPU (the selector then picks the long-window streams): settings
# and bandwidth hint.
CHAIN_VARIANTS: dict[str, tuple[dict[str, object], float | None]] = {
    "dwcp": ({}, None),
    "dwcp 1 thread": ({"threads": 1}, None),
    "dwcp 1 thread numpy": ({"threads": 1, "native": False}, None),
    "dwcp 100Mbit/s": ({}, 100e6),
    # An internet link: slower than the long-window streams compress at level 15.
    SLOW_LINK: ({}, 10e6),
    # A link faster than zstd-1 on these cores: the selector's fast end (lz4, raw).
    "dwcp 10Gbit/s": ({}, 10e9),
    # Both ends given the guest's kernel and initrd as reference files (what a libvirt stream
    # migration over DWCP does by default for a direct-boot guest): RAM pages equal to a page
    # of them travel as references.
    BOOT_FILES: ({}, None),
}
TARGETS = {"changes": 0.35, "first": 0.85}
PRELOAD: list[float] = []  # seconds to make an encoder with the boot files preloaded


@dataclass
class Result:
    """Bytes and times of one codec on one data set (times: one entry per repetition)."""

    bytes_in: int = 0
    bytes_out: int = 0
    encode_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)
    encode_cpu: list[float] = field(default_factory=list)  # CPU seconds of all threads
    bytes_runs: list[int] = field(default_factory=list)  # bytes out of every repetition
    # The chain's encode seconds by stage (its CodecStats.seconds), one dict per repetition.
    stages: list[dict[str, float]] = field(default_factory=list)

    def add(
        self, size_in: int, size_out: int, encoded: float, decoded: float, encode_cpu: float
    ) -> None:
        """Account one round of this repetition."""
        self.bytes_in += size_in
        self.bytes_out += size_out
        if not self.encode_s:
            self.encode_s, self.decode_s, self.encode_cpu = [0.0], [0.0], [0.0]
        self.encode_s[0] += encoded
        self.decode_s[0] += decoded
        self.encode_cpu[0] += encode_cpu

    def add_stages(self, before: dict[str, float], after: dict[str, float]) -> None:
        """Account the chain's stage seconds of one round of this repetition."""
        if not self.stages:
            self.stages = [{}]
        for stage, seconds in after.items():
            spent = seconds - before.get(stage, 0.0)
            self.stages[0][stage] = self.stages[0].get(stage, 0.0) + spent

    def mbps(self, times: list[float]) -> float:
        """Input megabytes per second at the best time."""
        return self.bytes_in / min(times) / 1e6


Rounds = list[list[PageBatch]]  # one list of batches per round (image 0, then each change)


@dataclass
class Corpus:
    """One workload's rounds, and the previous version of every page in each batch."""

    rounds: Rounds
    previous: list[list[bytes]]


def load_rounds(directory: Path, images: int, batch_pages: int) -> Corpus:
    """Batches of image 0, then of the pages that changed between consecutive images."""
    files = sorted(directory.glob("image-*.raw"))[:images]
    corpus = Corpus([], [])
    previous: np.ndarray | None = None
    for path in files:
        table = np.fromfile(path, np.uint64).reshape(-1, PAGE // 8)
        if previous is None:
            indices = np.arange(len(table))
            before = np.zeros_like(table)
        else:
            indices = np.flatnonzero((table != previous).any(axis=1))
            before = previous
        cuts = [indices[i : i + batch_pages] for i in range(0, len(indices), batch_pages)]
        corpus.rounds.append([PageBatch(cut.tolist(), table[cut].tobytes()) for cut in cuts])
        corpus.previous.append([before[cut].tobytes() for cut in cuts])
        previous = table
    return corpus


def run_xor_reference(corpus: Corpus, results: dict[str, Result]) -> None:
    """XOR against the previous version of each page, then zstd-1 (the issue's reference)."""
    compressor, decompressor = zstandard.ZstdCompressor(level=1), zstandard.ZstdDecompressor()

    def xor(a: bytes, b: bytes) -> bytes:
        return np.bitwise_xor(np.frombuffer(a, np.uint64), np.frombuffer(b, np.uint64)).tobytes()

    labels = ("first",) + ("changes",) * (len(corpus.rounds) - 1)
    for label, batches, olds in zip(labels, corpus.rounds, corpus.previous, strict=True):
        started, cpu = time.perf_counter(), time.process_time()
        payloads = [
            compressor.compress(xor(b.data, old)) for b, old in zip(batches, olds, strict=True)
        ]
        encoded = time.perf_counter() - started
        encode_cpu = time.process_time() - cpu
        started = time.perf_counter()
        outputs = [
            xor(decompressor.decompress(p), old) for p, old in zip(payloads, olds, strict=True)
        ]
        decoded = time.perf_counter() - started
        _record(results[label], batches, payloads, encoded, decoded, encode_cpu)
        if any(out != b.data for out, b in zip(outputs, batches, strict=True)):
            raise SystemExit("xor+zstd-1 did not round-trip")


def stateless(name: str) -> tuple[Callable[[bytes], bytes], Callable[[bytes, int], bytes]]:
    """Compress/decompress functions of a stateless baseline codec."""
    if name == "lz4":
        return (
            lambda data: lz4.block.compress(data, store_size=False),
            lambda data, size: lz4.block.decompress(data, uncompressed_size=size),
        )
    compressor = zstandard.ZstdCompressor(level=int(name.split("-")[1]))
    decompressor = zstandard.ZstdDecompressor()
    return compressor.compress, lambda data, size: decompressor.decompress(data)


def run_stateless(name: str, rounds: Rounds, results: dict[str, Result]) -> None:
    """One timed pass of a baseline codec over every round."""
    encode, decode = stateless(name)
    for label, batches in zip(("first",) + ("changes",) * (len(rounds) - 1), rounds, strict=True):
        started, cpu = time.perf_counter(), time.process_time()
        payloads = [encode(batch.data) for batch in batches]
        encoded = time.perf_counter() - started
        encode_cpu = time.process_time() - cpu
        started = time.perf_counter()
        outputs = [decode(p, len(b.data)) for p, b in zip(payloads, batches, strict=True)]
        decoded = time.perf_counter() - started
        _record(results[label], batches, payloads, encoded, decoded, encode_cpu)
        if any(out != b.data for out, b in zip(outputs, batches, strict=True)):
            raise SystemExit(f"{name} did not round-trip")


def run_parallel_zstd(rounds: Rounds, results: dict[str, Result]) -> None:
    """zstd-1 with the chain's thread budget: each batch cut into THREADS independent frames
    compressed at the same time (the caller's thread takes one), as the chain cuts its literals.
    """
    local = threading.local()

    def compress_one(piece: memoryview) -> bytes:
        compressor: zstandard.ZstdCompressor | None = getattr(local, "compressor", None)
        if compressor is None:
            compressor = local.compressor = zstandard.ZstdCompressor(level=1)
        return compressor.compress(piece)

    def decompress_one(piece: bytes) -> bytes:
        decompressor: zstandard.ZstdDecompressor | None = getattr(local, "decompressor", None)
        if decompressor is None:
            decompressor = local.decompressor = zstandard.ZstdDecompressor()
        return decompressor.decompress(piece)

    def fan_out(function: Callable[[Any], bytes], pieces: list[Any]) -> list[bytes]:
        futures = [pool.submit(function, piece) for piece in pieces[1:]]
        return [function(pieces[0]), *(future.result() for future in futures)]

    labels = ("first",) + ("changes",) * (len(rounds) - 1)
    with ThreadPoolExecutor(max(1, THREADS - 1)) as pool:
        for label, batches in zip(labels, rounds, strict=True):
            started, cpu = time.perf_counter(), time.process_time()
            payloads = [fan_out(compress_one, _cut(batch.data)) for batch in batches]
            encoded = time.perf_counter() - started
            encode_cpu = time.process_time() - cpu
            started = time.perf_counter()
            outputs = [b"".join(fan_out(decompress_one, frames)) for frames in payloads]
            decoded = time.perf_counter() - started
            sizes = [b"".join(frames) for frames in payloads]
            _record(results[label], batches, sizes, encoded, decoded, encode_cpu)
            if any(out != b.data for out, b in zip(outputs, batches, strict=True)):
                raise SystemExit(f"{PARALLEL_ZSTD} did not round-trip")


def _cut(data: bytes) -> list[memoryview]:
    """THREADS pieces of ``data`` (fewer for small batches: at least 64 KiB each)."""
    view = memoryview(data)
    parts = max(1, min(THREADS, len(data) // (64 * 1024)))
    step = -(-len(data) // parts) if data else 1
    return [view[start : start + step] for start in range(0, len(data), step)] or [view]


def boot_files(corpus: Path, workload: str) -> list[Path]:
    """The kernel and initrd the workload's guest booted from, as the corpus builder kept them."""
    kernels = sorted(corpus.glob(".kernel/root/boot/vmlinuz-*"))
    initrd = corpus / f".initrd-{workload}.cpio"
    return [*kernels[-1:], *([initrd] if initrd.exists() else [])]


def run_chain(
    name: str,
    rounds: Rounds,
    results: dict[str, Result],
    kinds: dict[str, int],
    references: list[Path],
) -> None:
    """One timed pass of the DWCP chain: one encoder/decoder pair over all rounds in order.

    The encoder is made before the clock starts; with reference files its preloading time is
    recorded apart (``PRELOAD``).
    """
    from novacron_dwcp.encoding.chain import DwcpCodec

    settings, hint = CHAIN_VARIANTS[name]
    if name == BOOT_FILES:
        settings = {**settings, "reference_files": references}
    codec = DwcpCodec(settings)
    started = time.perf_counter()
    encoder = codec.new_encoder(PAGE)
    if name == BOOT_FILES:
        PRELOAD.append(time.perf_counter() - started)
    decoder = codec.new_decoder(PAGE)
    if hint is not None:
        encoder.set_bandwidth_hint(hint)
    for label, batches in zip(("first",) + ("changes",) * (len(rounds) - 1), rounds, strict=True):
        stages = dict(encoder.stats().seconds)
        started, cpu = time.perf_counter(), time.process_time()
        payloads = [encoder.encode(batch) for batch in batches]
        encoded = time.perf_counter() - started
        encode_cpu = time.process_time() - cpu
        results[label].add_stages(stages, encoder.stats().seconds)
        started = time.perf_counter()
        outputs = [decoder.decode(payload) for payload in payloads]
        decoded = time.perf_counter() - started
        _record(results[label], batches, payloads, encoded, decoded, encode_cpu)
        if any(out.data != b.data for out, b in zip(outputs, batches, strict=True)):
            raise SystemExit("the DWCP chain did not round-trip")
    kinds.clear()
    kinds.update(encoder.stats().by_kind)


def _record(
    result: Result,
    batches: list[PageBatch],
    payloads: list[bytes],
    encoded: float,
    decoded: float,
    encode_cpu: float,
) -> None:
    size_in = sum(len(b.data) for b in batches)
    result.add(size_in, sum(len(p) for p in payloads), encoded, decoded, encode_cpu)


def ensure_corpus(corpus: Path, quick: bool) -> dict[str, object] | None:
    """The corpus manifest; builds the corpus (or its missing workloads) first, not with --quick."""
    manifest = corpus / "manifest.json"
    missing = [w for w in WORKLOADS if not (corpus / w / "image-00.raw").exists()]
    if manifest.exists() and (quick or not missing):
        if missing:
            print(f"the corpus has no {', '.join(missing)} workload: run without --quick to add it")
        loaded: dict[str, object] = json.loads(manifest.read_text())
        return loaded
    if quick:
        print(
            f"no memory corpus in {corpus}: run `python {BUILDER.relative_to(ROOT)}` (about three "
            "minutes with QEMU installed) or this benchmark without --quick; no figures reported"
        )
        return None
    what = "the corpus" if not manifest.exists() else f"the {', '.join(missing)} workload"
    print(f"building {what} in {corpus} with {BUILDER.name} (about a minute a workload)")
    started = time.perf_counter()
    command = [sys.executable, str(BUILDER), "--out", str(corpus), "--workloads", ",".join(missing)]
    built = subprocess.run(command, check=False)
    if built.returncode != 0:
        print("the corpus could not be built (see above; QEMU missing?): no figures reported")
        return None
    print(f"corpus built in {time.perf_counter() - started:.0f}s")
    return ensure_corpus(corpus, quick)


def _speed_baseline(name: str) -> str:
    """The codec whose speed ``name``'s is judged against: same thread budget."""
    same_threads = ("dwcp", "dwcp 100Mbit/s", SLOW_LINK, "dwcp 10Gbit/s", BOOT_FILES)
    return PARALLEL_ZSTD if name in same_threads else "zstd-1"


def _speed(label: str, name: str, what: str, mine: Result, base: Result, target: bool) -> Figure:
    """An encode or decode figure, with per-run values and per-run ratios to its baseline."""
    mine_s, base_s = {
        "encode": (mine.encode_s, base.encode_s),
        "decode": (mine.decode_s, base.decode_s),
        "encode per CPU-second": (mine.encode_cpu, base.encode_cpu),
    }[what]
    value, baseline = mine.mbps(mine_s), base.mbps(base_s)
    figure = Figure(
        f"{label}: {name} {what}", value, "MB/s", _speed_baseline(name), baseline,
        target=">= 1x" if target else None, met=value >= baseline if target else None,
        samples=[round(mine.bytes_in / t / 1e6, 1) for t in mine_s],
    )  # fmt: skip
    SPREAD[figure.name] = [round(b / m, 3) for m, b in zip(mine_s, base_s, strict=True)]
    return figure


def _stages(label: str, mine: Result, base: Result) -> list[Figure]:
    """Where the one-thread chain's encode time went, each stage against zstd-1's whole time.

    From the chain's fastest repetition: compressing its literals (whole pages after zero,
    duplicate and copy elimination, and delta bytes), classifying the pages, updating the
    page store, and the rest (control section, checksums, header). The encode target cannot
    be met where the literals alone take about as long as zstd-1 does on everything.
    """
    fastest = min(range(len(mine.encode_s)), key=mine.encode_s.__getitem__)
    spent = mine.stages[fastest]
    parts = {
        "literal compression": spent.get("compress", 0.0),
        "classification": spent.get("classify", 0.0),
        "page store": spent.get("store", 0.0),
    }
    parts["rest"] = max(0.0, mine.encode_s[fastest] - sum(parts.values()))
    baseline = min(base.encode_s)
    name = f"{label}: dwcp 1 thread time in"
    return [
        Figure(f"{name} {stage}", seconds, "s", "zstd-1 encode time", baseline)
        for stage, seconds in parts.items()
    ]


# Per figure, the ratio to its baseline in each repetition (both measured back to back).
SPREAD: dict[str, list[float]] = {}


def figures_for(workload: str, results: dict[str, dict[str, Result]]) -> list[Figure]:
    """Bytes and throughput figures for one workload, each against a baseline of the same run."""
    figures: list[Figure] = []
    for label in ("first", "changes"):
        base = results["zstd-1"][label]
        if not base.bytes_in:
            continue
        base_ratio = base.bytes_out / base.bytes_in
        for name in CODECS[1:]:
            if name == "xor+zstd-1" and label == "first":
                continue  # against zero pages: zstd-1 plus a pass over the data
            mine = results[name][label]
            if not mine.bytes_in:
                continue  # not run (--quick)
            ratio = mine.bytes_out / mine.bytes_in
            chain = name in ("dwcp", "dwcp 100Mbit/s", SLOW_LINK, BOOT_FILES)
            limit = TARGETS[label]
            figures.append(Figure(
                f"{workload} {label}: {name} bytes out/in", ratio, "", "zstd-1", base_ratio,
                target=f"<= {limit}x zstd-1" if chain else None,
                met=ratio <= limit * base_ratio if chain else None,
            ))  # fmt: skip
            SPREAD[figures[-1].name] = [
                round(size / mine.bytes_in / base_ratio, 3) for size in mine.bytes_runs
            ]
            # Speed is the target without a hint (on the default threads, and on one);
            # at 100 and 10 Mbit/s the chain only has to keep up with the link.
            speed = name in ("dwcp", "dwcp 1 thread")
            speed_base = results[_speed_baseline(name)][label]
            for what in ("encode", "decode"):
                target = speed and what == "encode"
                figures.append(_speed(f"{workload} {label}", name, what, mine, speed_base, target))
            if name == "dwcp 1 thread":
                figures.extend(_stages(f"{workload} {label}", mine, results["zstd-1"][label]))
            if name == "dwcp":
                # CPU work against zstd-1's, whatever the threads got from a busy machine.
                cpu = _speed(f"{workload} {label}", name, "encode per CPU-second", mine,
                             results["zstd-1"][label], target=False)  # fmt: skip
                cpu.baseline_name = "zstd-1"
                figures.append(cpu)
    return figures


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module docstring."""
    args = parse_args(__doc__ or "", argv, _extra)
    manifest = ensure_corpus(args.corpus, args.quick)
    if manifest is None:
        return 0
    repeat = args.repeat or (1 if args.quick else 3)
    images = args.images or (2 if args.quick else 6)
    workloads = sorted(p.parent.name for p in args.corpus.glob("*/image-00.raw"))
    figures: list[Figure] = []
    kinds_by_workload: dict[str, dict[str, dict[str, int]]] = {}
    extra = {
        "corpus": manifest, "batch_pages": args.batch_pages, "kinds": kinds_by_workload,
        "threads": THREADS, "ratio_per_run": SPREAD, "native_extension": NATIVE,
    }  # fmt: skip
    boot: dict[str, list[dict[str, object]]] = {}
    extra["boot_files"] = boot
    if args.quick:
        print(f"{SLOW_LINK}: not run with --quick (about 40 s a repetition)")
    for workload in workloads:
        corpus = load_rounds(args.corpus / workload, images, args.batch_pages)
        rounds = corpus.rounds
        references = boot_files(args.corpus, workload)
        boot[workload] = [{"file": p.name, "bytes": p.stat().st_size} for p in references]
        history: dict[str, list[dict[str, Result]]] = {name: [] for name in CODECS}
        kinds: dict[str, dict[str, int]] = {}
        for _ in range(repeat):
            # Interleaved so that a burst of load elsewhere hits every codec alike.
            for name in CODECS:
                current = {"first": Result(), "changes": Result()}
                if name == SLOW_LINK and args.quick:
                    pass  # about 40 s a repetition: full runs only
                elif name in CHAIN_VARIANTS:
                    run_chain(name, rounds, current, kinds.setdefault(name, {}), references)
                elif name == "xor+zstd-1":
                    run_xor_reference(corpus, current)
                elif name == PARALLEL_ZSTD:
                    run_parallel_zstd(rounds, current)
                else:
                    run_stateless(name, rounds, current)
                history[name].append(current)
        kinds_by_workload[workload] = kinds
        figures.extend(figures_for(workload, {n: _best(h) for n, h in history.items()}))
    path = "native hot path" if NATIVE else "numpy fallback: the native extension is NOT built"
    title = (
        f"DWCP encoding on real guest memory ({args.batch_pages}-page batches, best of {repeat}, "
        f"{path})"
    )
    extra["boot_file_preload_s"] = [round(t, 4) for t in PRELOAD]
    code = report("encoding", title, args, figures, extra)
    print("ratio to the baseline in each run (bytes, encode, decode):")
    for name, ratios in SPREAD.items():
        print(f"  {name}: {', '.join(f'{r:.2f}' for r in ratios)}")
    return code


def _best(history: list[dict[str, Result]]) -> dict[str, Result]:
    """The largest bytes out of all repetitions and every repetition's bytes and times.

    Bytes differ between repetitions only when a bandwidth hint lets the selector's choices
    depend on measured speed; the largest is the figure, every run's is kept.
    """
    best: dict[str, Result] = {}
    for label in ("first", "changes"):
        runs = [h[label] for h in history]
        merged = Result(runs[0].bytes_in, max(r.bytes_out for r in runs))
        merged.bytes_runs = [r.bytes_out for r in runs]
        merged.encode_s = [t for r in runs for t in r.encode_s]
        merged.decode_s = [t for r in runs for t in r.decode_s]
        merged.encode_cpu = [t for r in runs for t in r.encode_cpu]
        merged.stages = [t for r in runs for t in r.stages]
        best[label] = merged
    return best


def _extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="corpus directory")
    parser.add_argument("--batch-pages", type=int, default=256, help="pages per batch")
    parser.add_argument("--repeat", type=int, default=0, help="timed runs (3; 1 with --quick)")
    parser.add_argument("--images", type=int, default=0, help="images per workload (6; 2 quick)")


if __name__ == "__main__":
    raise SystemExit(main())
