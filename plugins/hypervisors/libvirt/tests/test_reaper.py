"""The test daemon's subreaper: orphans below it are reaped at once, signals are forwarded."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

REAPER = [sys.executable, "-m", "novacron_libvirt.testing.reaper", "--"]


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
    # The inner shell daemonizes a sleep (as libvirt daemonizes QEMU) and exits at once.
    script = f"sh -c 'sleep 0.5 & echo $! > {marker}'; sleep 3"
    reaper = subprocess.Popen([*REAPER, "sh", "-c", script])
    try:
        deadline = time.monotonic() + 2
        while not marker.exists() or not marker.read_text().strip():
            assert time.monotonic() < deadline, "the orphan never started"
            time.sleep(0.01)
        orphan = int(marker.read_text())
        time.sleep(0.1)
        assert orphan in children_of(reaper.pid), "the orphan was reparented to the reaper"
        time.sleep(0.8)  # the orphan's sleep is over
        assert orphan not in children_of(reaper.pid), "the exited orphan was reaped, no zombie"
    finally:
        reaper.terminate()
        reaper.wait(timeout=5)


def test_exit_status_and_forwarded_signals() -> None:
    assert subprocess.run([*REAPER, "sh", "-c", "exit 7"], check=False).returncode == 7
    reaper = subprocess.Popen([*REAPER, "sleep", "30"])
    time.sleep(0.3)
    reaper.send_signal(signal.SIGTERM)
    # The command was terminated by the forwarded signal, reported as a shell would.
    assert reaper.wait(timeout=5) == 128 + signal.SIGTERM
    assert subprocess.run([*REAPER], check=False, capture_output=True).returncode == 2


def test_a_missing_command_fails() -> None:
    result = subprocess.run(
        [*REAPER, "/nonexistent/command"], check=False, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "nonexistent" in result.stderr
