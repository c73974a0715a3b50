"""Builds the busybox initramfs (cpio newc) whose init runs a memory-dirtying guest workload."""

from __future__ import annotations

import io
import stat
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

# Each workload runs forever once started; the dumper pauses the guest between images, so
# what changes between two images is whatever the workload dirtied in the interval.
WORKLOADS: dict[str, str] = {
    # A redis-like in-memory key/value service: a process heap with a large table that is
    # updated in place at random, plus an append-only log in tmpfs that is rewritten when big.
    "kvstore": r"""
awk -v N=120000 'BEGIN {
  srand(7)
  for (i = 0; i < N; i++) kv["user:" i] = "name=u" i ";score=" int(rand() * 100000) ";visits=0"
  print "novacron-corpus: ready" > "/dev/console"
  logf = "/work/appendonly.log"; n = 0
  while (1) {
    k = "user:" int(rand() * N)
    kv[k] = "name=" k ";score=" int(rand() * 100000) ";visits=" (++n) ";t=" n * 3
    print "SET", k, kv[k] >> logf
    if (n % 40000 == 0) { close(logf); system("mv /work/appendonly.log /work/appendonly.old") }
    if (n % 5000 == 0) { for (j = 0; j < 50; j++) delete kv["user:" int(rand() * N)] }
  }
}'
""",
    # A build/log-processing box: generate text, sort it, compress it, verify it, rotate it.
    "files": r"""
echo "novacron-corpus: ready" > /dev/console
round=0
while true; do
  round=$((round + 1))
  seq $((round * 1000)) $((round * 1000 + 30000)) \
    | awk '{ print $1, ($1 * 7919) % 100003, "host-" ($1 % 97) ".example.org",
             "GET /api/v1/items/" $1 }' \
    > /work/access.$((round % 4)).log
  sort -k2 -n /work/access.$((round % 4)).log > /work/sorted.log
  gzip -c /work/sorted.log > /work/sorted.$((round % 3)).gz
  gunzip -c /work/sorted.$((round % 3)).gz | md5sum > /work/sum.txt
  cp /work/sorted.log /work/copy.$((round % 2)).log
done
""",
    # A real redis 7 server (Debian's build, its libraries copied in) used as a cache under
    # write load: filled with DEBUG POPULATE, then redis-benchmark writes random keys (strings,
    # counters, lists, hashes) without pause until LRU eviction keeps it at maxmemory.
    "redis": r"""
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu
ifconfig lo 127.0.0.1 up
redis-server --bind 127.0.0.1 --port 6379 --save "" --appendonly no --daemonize yes \
  --dir /work --logfile /work/redis.log --enable-debug-command yes \
  --maxmemory 96mb --maxmemory-policy allkeys-lru
until redis-cli ping > /dev/null 2>&1; do sleep 0.2; done
redis-cli DEBUG POPULATE 200000 key 100 > /dev/null
echo "novacron-corpus: ready" > /dev/console
redis-benchmark -q -l -c 4 -P 8 -r 400000 -d 100 -t set,incr,lpush,hset > /dev/null
""",
}

# Files a workload needs besides busybox (its programs and their shared libraries), which the
# corpus builder fetches from Debian packages; see ``build_memory_corpus.fetch_redis``.
NEEDS_FILES: dict[str, tuple[str, ...]] = {
    "redis": ("usr/bin/redis-server", "usr/bin/redis-cli", "usr/bin/redis-benchmark"),
}

INIT_TEMPLATE = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /work
mount -t tmpfs -o size=96m tmpfs /work
echo "novacron-corpus: workload {name} starting" > /dev/console
{body}
echo "novacron-corpus: workload ended" > /dev/console
poweroff -f
"""


class CpioWriter:
    """Writes a cpio archive in the "newc" format the Linux kernel unpacks as initramfs."""

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._inode = 1

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        encoded = name.encode() + b"\0"
        fields = [
            self._inode,
            mode,
            0,
            0,
            1,
            0,
            len(data),
            0,
            0,
            rdev[0],
            rdev[1],
            len(encoded),
            0,
        ]
        self._inode += 1
        header = b"070701" + b"".join(f"{value:08x}".encode() for value in fields)
        self._out.write(header + encoded)
        self._pad()
        self._out.write(data)
        self._pad()

    def _pad(self) -> None:
        self._out.write(b"\0" * (-self._out.tell() % 4))

    def directory(self, name: str) -> None:
        """Add a directory."""
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        """Add a regular file."""
        self._entry(name, stat.S_IFREG | mode, data)

    def char_device(self, name: str, major: int, minor: int) -> None:
        """Add a character device node."""
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        """The archive, closed with the trailer entry."""
        self._entry("TRAILER!!!", 0)
        return self._out.getvalue()


def build_initramfs(
    busybox: Path, workload: str, extra_files: Mapping[str, tuple[bytes, int]] | None = None
) -> bytes:
    """An initramfs holding a static busybox and an init that runs ``workload``.

    ``extra_files`` maps archive paths (relative, e.g. ``usr/bin/redis-server``) to their
    content and permission bits; a workload listed in ``NEEDS_FILES`` must be given its files.
    """
    if workload not in WORKLOADS:
        msg = f"unknown workload {workload!r}; choose one of {sorted(WORKLOADS)}"
        raise ValueError(msg)
    extras = dict(extra_files or {})
    missing = [name for name in NEEDS_FILES.get(workload, ()) if name not in extras]
    if missing:
        msg = (
            f"workload {workload!r} needs {', '.join(missing)} in the initramfs: build the "
            "corpus with scripts/build_memory_corpus.py, which fetches them from Debian packages"
        )
        raise ValueError(msg)
    cpio = CpioWriter()
    directories = ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp"]
    for name in sorted(extras):
        parts = PurePosixPath(name).parts
        if PurePosixPath(name).is_absolute() or ".." in parts or not parts:
            msg = f"initramfs path {name!r} must be relative and stay inside the archive"
            raise ValueError(msg)
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent not in directories:
                directories.append(parent)
    for directory in directories:
        cpio.directory(directory)
    cpio.char_device("dev/console", 5, 1)
    cpio.char_device("dev/null", 1, 3)
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    for name in sorted(extras):
        data, mode = extras[name]
        cpio.file(name, data, mode)
    init = INIT_TEMPLATE.format(name=workload, body=WORKLOADS[workload].strip())
    cpio.file("init", init.encode(), 0o755)
    return cpio.finish()
