"""The memory-corpus tooling: the initramfs writer and the benchmark without a corpus."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "scripts"))

from corpus_initramfs import WORKLOADS, CpioWriter, build_initramfs  # noqa: E402 - scripts/ is no package


def read_newc(archive: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    """Parse a cpio "newc" archive: name -> (mode, data, (rdev major, minor))."""
    entries = {}
    position = 0
    while True:
        header = archive[position : position + 110]
        assert header[:6] == b"070701"
        fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, size, rdev, name_size = fields[1], fields[6], (fields[9], fields[10]), fields[11]
        name_start = position + 110
        name = archive[name_start : name_start + name_size - 1].decode()
        data_start = name_start + name_size + (-(110 + name_size) % 4)
        data = archive[data_start : data_start + size]
        position = data_start + size + (-size % 4)
        if name == "TRAILER!!!":
            assert position == len(archive)
            return entries
        entries[name] = (mode, data, rdev)


def test_cpio_writer_round_trips(tmp_path: Path) -> None:
    """Directories, files (odd sizes, padding) and device nodes come back as written."""
    cpio = CpioWriter()
    cpio.directory("dev")
    cpio.file("a", b"x" * 5, 0o755)
    cpio.file("bb", b"", 0o600)
    cpio.char_device("dev/console", 5, 1)
    entries = read_newc(cpio.finish())
    assert stat.S_ISDIR(entries["dev"][0])
    assert entries["a"][1] == b"xxxxx"
    assert stat.S_IMODE(entries["a"][0]) == 0o755
    assert entries["bb"][1] == b""
    assert stat.S_ISCHR(entries["dev/console"][0])
    assert entries["dev/console"][2] == (5, 1)


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_initramfs_runs_the_workload(tmp_path: Path, workload: str) -> None:
    """The archive holds busybox and an executable init that runs the chosen workload."""
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF fake busybox")
    entries = read_newc(build_initramfs(busybox, workload))
    assert entries["bin/busybox"][1] == busybox.read_bytes()
    mode, init, _ = entries["init"]
    assert stat.S_IMODE(mode) & 0o111
    assert init.startswith(b"#!/bin/busybox sh\n")
    assert WORKLOADS[workload].strip().encode() in init
    assert b"novacron-corpus: ready" in init


def test_unknown_workload_is_refused(tmp_path: Path) -> None:
    """A typo in --workloads names the valid choices."""
    with pytest.raises(ValueError, match="kvstore"):
        build_initramfs(tmp_path / "busybox", "redis")


def test_benchmark_without_corpus_reports_nothing(tmp_path: Path) -> None:
    """--quick with no corpus says how to build one and reports no (invented) figures."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "encoding.py"), "--quick",
         "--corpus", str(tmp_path), "--json", str(tmp_path / "out.json")],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert "no memory corpus" in out.stdout
    assert "build_memory_corpus.py" in out.stdout
    assert not (tmp_path / "out.json").exists()
