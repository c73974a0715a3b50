"""User mistakes at the CLI end in one clean message and exit 2: demo options, agent start-up.

Also the agent's start and stop lines, which tell a user of ``--port 0`` where it listens.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from novacron_sdk.cli.commands import number_arg
from novacron_sdk.errors import ConfigError

CORE_ONLY = {"NOVACRON_DISABLED_PLUGINS": "*"}


@pytest.mark.parametrize(
    ("option", "value", "problem"),
    [
        ("--memory-mib", "0", "'0' is out of range: use an integer of at least 1"),
        ("--memory-mib", "-5", "'-5' is out of range: use an integer of at least 1"),
        ("--memory-mib", "1.5", "'1.5' is not an integer: use an integer of at least 1"),
        ("--rate-mbps", "-1", "'-1' is out of range: use a number of at least 0"),
        ("--rate-mbps", "nan", "'nan' is out of range: use a number of at least 0"),
        ("--downtime-ms", "0", "'0' is out of range: use a number greater than 0"),
        ("--max-bandwidth-mbps", "inf", "'inf' is out of range: use a number greater than 0"),
        ("--max-bandwidth-mbps", "fast", "'fast' is not a number: use a number greater than 0"),
    ],
)
def test_bad_demo_numbers_are_usage_errors(novacron_cli, option, value, problem):
    result = novacron_cli("demo", "--no-progress", option, value)
    assert result.exit_code == 2
    assert f"novacron demo: error: argument {option}: {problem}\n" in result.stderr
    assert "unexpected" not in result.stderr
    assert "started agents" not in result.stdout


def test_migrate_shares_the_checked_settings_options(novacron_cli):
    result = novacron_cli("migrate", "vm", "--to", "http://127.0.0.1:9", "--downtime-ms", "-1")
    assert result.exit_code == 2
    assert "argument --downtime-ms: '-1' is out of range" in result.stderr


def test_demo_vm_too_big_for_any_host_fails_before_agents_start(novacron_cli):
    result = novacron_cli("demo", "--no-progress", "--memory-mib", "99999999")
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "error: invalid demo option --memory-mib 99999999: Input should be less than or equal"
    )
    assert result.stdout == ""  # no agent was started


def test_demo_settings_are_checked_before_agents_start(monkeypatch):
    from novacron_sdk.migration import demo

    def no_agents(*args: object, **kwargs: object) -> None:
        raise AssertionError("an agent was started")

    monkeypatch.setattr(demo, "LocalAgent", no_agents)
    with pytest.raises(ConfigError, match=r"^invalid migration settings: downtime_limit_ms"):
        demo.run_demo(demo.DemoOptions(settings={"downtime_limit_ms": -1}, progress=False))
    with pytest.raises(ConfigError, match=r"^invalid demo option --memory-mib 0: "):
        demo.run_demo(demo.DemoOptions(memory_mib=0, progress=False))


def test_number_arg_accepts_what_it_promises():
    assert number_arg(int, minimum=1)("7") == 7
    assert number_arg(float, minimum=0.0)("0") == 0.0
    assert number_arg(float, minimum=0.0, exclusive=True)("0.25") == 0.25


def test_agent_with_an_unknown_driver_fails_at_once(novacron_subprocess):
    # No backoff (it used to retry after 0.5 s + 1 s): one attempt, no "retrying" line. What
    # it costs is not timed here; a hang is bounded by the subprocess runner's timeout.
    result = novacron_subprocess("agent", "--port", "0", "--driver", "foo", env=CORE_ONLY)
    assert result.exit_code == 2
    assert "retrying" not in result.stderr
    assert (
        "error: critical component 'agent.driver' failed to start after 1 attempt: "
        "UnknownNameError: no hypervisor named 'foo'; known: "
    ) in result.stderr
    assert result.stderr.count("no hypervisor named 'foo'") == 1


@pytest.mark.slow
def test_agent_says_where_it_listens_and_when_it_stops(subprocess_env, tmp_path: Path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "novacron_sdk", "agent", "--port", "0", "--name", "host-x"],
        env=subprocess_env(CORE_ONLY),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # blocks until the agent serves (or exits)
        found = re.fullmatch(
            r"agent host-x listening on (http://127\.0\.0\.1:\d+) "
            r"\(migrations on 127\.0\.0\.1, a free port per migration transport\)\n",
            line,
        )
        assert found, line + proc.stderr.read() if proc.poll() is not None else line
        url = found.group(1)
        assert httpx.get(f"{url}/health", timeout=30).json() == {"status": "ok"}
        proc.send_signal(signal.SIGTERM)
        stdout, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pipe in (proc.stdout, proc.stderr):  # a failed test must not leak them
            if pipe is not None:
                pipe.close()
    assert proc.returncode == 0, rest
    assert rest == "agent host-x stopped\n"
    assert stdout == ""


def test_progress_log_lines_do_not_show_the_source_file() -> None:
    """Event lines of the progress display read 'verified: ...', without 'display.py:81'."""
    import io

    from novacron_sdk.migration.display import ProgressDisplay
    from novacron_sdk.migration.models import MigrationEvent

    display = ProgressDisplay(enabled=True)
    buffer = io.StringIO()
    display.console.file = buffer
    event = MigrationEvent(
        migration_id="m", vm="v", kind="verified", phase="verifying", message="16 pages match"
    )
    with display:
        display(event)
    assert "verified: 16 pages match" in buffer.getvalue()
    assert "display.py" not in buffer.getvalue()
