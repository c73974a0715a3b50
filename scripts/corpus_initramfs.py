"""Builds the busybox initramfs (cpio newc) whose init runs a memory-dirtying guest workload."""

from __future__ import annotations

import io
import stat
from pathlib import Path

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


def build_initramfs(busybox: Path, workload: str) -> bytes:
    """An initramfs holding a static busybox and an init that runs ``workload``."""
    if workload not in WORKLOADS:
        msg = f"unknown workload {workload!r}; choose one of {sorted(WORKLOADS)}"
        raise ValueError(msg)
    cpio = CpioWriter()
    for directory in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp"):
        cpio.directory(directory)
    cpio.char_device("dev/console", 5, 1)
    cpio.char_device("dev/null", 1, 3)
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    init = INIT_TEMPLATE.format(name=workload, body=WORKLOADS[workload].strip())
    cpio.file("init", init.encode(), 0o755)
    return cpio.finish()
