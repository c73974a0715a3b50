"""The test daemon's subreaper: orphans below it are reaped at once, signals are forwarded."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REAPER = [sys.executable, "-m", "novacron_libvirt.testing.reaper", "--"]
WITHIN_S = 20.0
"""How long a condition may take to hold: a hang, not a slow machine (not a speed check)."""


def wait_until(check: Callable[[], bool], what: str) -> None:
    """Poll ``check`` until it is true; fail the test if it is not within ``WITHIN_S``."""
    deadline = time.monotonic() + WITHIN_S
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {WITHIN_S} s"
        time.sleep(0.01)


def stop(reaper: subprocess.Popen[bytes]) -> None:
    """Kill the reaper's processes (its command, and an orphan a failed test left), then it."""
    if reaper.poll() is None:
        for pid in children_of(reaper.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        reaper.terminate()
    reaper.wait(timeout=WITHIN_S)


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has installed a handler for ``signum`` (SigCgt in its status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def children_of(pid: int) -> dict[int, str]:
    """pid -> state letter of every process whose parent is ``pid``."""
    found: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found[int(stat.parent.name)] = fields[0]
    return found


def test_orphans_are_reparented_to_the_reaper_and_reaped_when_they_exit(tmp_path: Path) -> None:
    marker = tmp_path / "orphan.pid"
    # The inner shell daemonizes a sleep (as libvirt daemonizes QEMU) and exits at once. The
    # orphan lives until the test ends it, so no step depends on how fast the machine is.
    script = f"sh -c 'sleep 600 & echo $! > {marker}'; exec sleep 600"
    reaper = subprocess.Popen([*REAPER, "sh", "-c", script])
    try:
        wait_until(
            lambda: marker.exists() and marker.read_text().strip() != "", "the orphan starts"
        )
        orphan = int(marker.read_text())
        # Reparented once the inner shell has exited.
        wait_until(
            lambda: orphan in children_of(reaper.pid), "the orphan is reparented to the reaper"
        )
        os.kill(orphan, signal.SIGTERM)  # the orphan exits now
        # A reaper that does not reap leaves it a zombie (state Z) below itself for good.
        wait_until(
            lambda: orphan not in children_of(reaper.pid), "the exited orphan is reaped, no zombie"
        )
    finally:
        stop(reaper)


def test_exit_status_and_forwarded_signals() -> None:
    assert subprocess.run([*REAPER, "sh", "-c", "exit 7"], check=False).returncode == 7
    reaper = subprocess.Popen([*REAPER, "sleep", "600"])
    try:
        # SIGTERM before the reaper installed its handler would kill the reaper itself.
        wait_until(lambda: catches(reaper.pid, signal.SIGTERM), "the reaper handles SIGTERM")
        reaper.send_signal(signal.SIGTERM)
        # The command was terminated by the forwarded signal, reported as a shell would.
        assert reaper.wait(timeout=WITHIN_S) == 128 + signal.SIGTERM
    finally:
        stop(reaper)
    assert subprocess.run([*REAPER], check=False, capture_output=True).returncode == 2


def test_a_missing_command_fails() -> None:
    result = subprocess.run(
        [*REAPER, "/nonexistent/command"], check=False, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "nonexistent" in result.stderr
