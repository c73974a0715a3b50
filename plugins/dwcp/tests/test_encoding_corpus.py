"""The memory-corpus tooling: the initramfs writer and the benchmark without a corpus."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "scripts"))

from build_memory_corpus import kept_workloads, shared_libraries  # noqa: E402 - scripts/ is no package
from corpus_initramfs import NEEDS_FILES, WORKLOADS, CpioWriter, build_initramfs  # noqa: E402


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
    extras = {name: (f"fake {name}".encode(), 0o755) for name in NEEDS_FILES.get(workload, ())}
    entries = read_newc(build_initramfs(busybox, workload, extras))
    assert entries["bin/busybox"][1] == busybox.read_bytes()
    for name, (data, _) in extras.items():
        assert entries[name][1] == data
        assert stat.S_IMODE(entries[name][0]) == 0o755
    mode, init, _ = entries["init"]
    assert stat.S_IMODE(mode) & 0o111
    assert init.startswith(b"#!/bin/busybox sh\n")
    assert WORKLOADS[workload].strip().encode() in init
    assert b"novacron-corpus: ready" in init


def test_unknown_workload_is_refused(tmp_path: Path) -> None:
    """A typo in --workloads names the valid choices."""
    with pytest.raises(ValueError, match="kvstore"):
        build_initramfs(tmp_path / "busybox", "postgres")


def test_redis_without_its_programs_is_refused(tmp_path: Path) -> None:
    """The redis guest needs Debian's redis binaries; without them the error says where from."""
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"busybox")
    with pytest.raises(ValueError, match=r"usr/bin/redis-server.*build_memory_corpus"):
        build_initramfs(busybox, "redis", {"usr/bin/redis-cli": (b"", 0o755)})


@pytest.mark.parametrize("name", ["/etc/passwd", "../escape", "usr/../../escape"])
def test_extra_files_stay_inside_the_archive(tmp_path: Path, name: str) -> None:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"busybox")
    with pytest.raises(ValueError, match="must be relative"):
        build_initramfs(busybox, "kvstore", {name: (b"x", 0o644)})


def test_extra_files_get_their_parent_directories(tmp_path: Path) -> None:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"busybox")
    extras = {"lib/x86_64-linux-gnu/libx.so.1": (b"lib", 0o755), "lib64/ld.so": (b"ld", 0o755)}
    entries = read_newc(build_initramfs(busybox, "kvstore", extras))
    for directory in ("lib", "lib/x86_64-linux-gnu", "lib64"):
        assert stat.S_ISDIR(entries[directory][0])
    assert entries["lib64/ld.so"][1] == b"ld"


def test_shared_libraries_of_a_host_program() -> None:
    """ldd's answer for a real dynamic program: its libraries and the loader, with content."""
    program = Path("/bin/ls")
    files = shared_libraries([program], [])
    assert "lib/x86_64-linux-gnu/libc.so.6" in files
    loaders = [name for name in files if name.startswith("lib64/ld-linux")]
    assert loaders
    data, mode = files[loaders[0]]
    assert data.startswith(b"\x7fELF")
    assert mode == 0o755


def test_building_one_workload_keeps_the_others_in_the_manifest(tmp_path: Path) -> None:
    (tmp_path / "kvstore").mkdir()
    (tmp_path / "kvstore" / "image-00.raw").write_bytes(b"")
    entry = {"images": [{"file": "kvstore/image-00.raw", "sha256": "0" * 64}], "seconds": 1}
    gone = {"images": [{"file": "files/image-00.raw", "sha256": "0" * 64}], "seconds": 1}
    redis = {"images": [], "seconds": 1}
    manifest = {"workloads": {"kvstore": entry, "files": gone, "redis": redis}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    # kvstore's images exist: kept; files' are gone: dropped; redis is being rebuilt: replaced.
    assert kept_workloads(tmp_path, {"redis"}) == {"kvstore": entry}
    assert kept_workloads(tmp_path / "nowhere", set()) == {}


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
