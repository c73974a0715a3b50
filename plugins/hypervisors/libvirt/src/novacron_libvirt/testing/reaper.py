"""Run a command as a child subreaper that reaps every orphan at once: ``python -m ... CMD``.

libvirt starts QEMU as a daemon (fork, setsid, fork): the QEMU process is an orphan from the
start and, when it exits, waits as a zombie until its new parent reaps it. On a normal host
that parent is systemd, which reaps at once. In a container or micro-VM whose init reaps
lazily (the development VM's init took 1.0-1.6 s), libvirt's ``virProcessKillPainfully``
keeps seeing the zombie (``kill(pid, 0)`` succeeds on a zombie) and every destroy, and the
confirm phase of every migration, waits that long for nothing.

The private test daemon (:mod:`novacron_libvirt.testing.daemon`) therefore runs under this
module: it marks itself ``PR_SET_CHILD_SUBREAPER`` so that orphans below it are reparented to
it, reaps every child as soon as it exits, forwards SIGTERM, SIGINT and SIGHUP to the command,
and exits with the command's status once the command has exited.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from types import FrameType

PR_SET_CHILD_SUBREAPER = 36
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def become_subreaper() -> None:
    """Mark this process as a child subreaper (Linux 3.4+)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(errno)}")


def run(argv: list[str]) -> int:
    """Start ``argv``, reap every child until it exits, return its exit status."""
    become_subreaper()
    child = os.posix_spawnp(argv[0], argv, dict(os.environ))

    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:  # the command and every orphan are gone
            return 1
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            return 128 - code if code < 0 else code  # killed by signal n: 128 + n, as a shell


def main() -> int:
    """``python -m novacron_libvirt.testing.reaper [--] CMD [ARG...]``."""
    argv = sys.argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        sys.stderr.write("usage: python -m novacron_libvirt.testing.reaper [--] CMD [ARG...]\n")
        return 2
    return run(argv)


if __name__ == "__main__":
    raise SystemExit(main())
