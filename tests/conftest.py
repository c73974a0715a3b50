"""Shared fixtures of the core test suite: the installed fake plugin, a CLI subprocess runner
and two sim drivers (``drivers``: the two ends of an in-process migration).

The pytest11 plugin (novacron_sdk.testing.pytest_plugin) adds ``novacron_plugins``,
``novacron_config``, ``sim_driver`` and ``novacron_cli``.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from novacron_sdk.builtin.sim.driver import SimDriver

ROOT = Path(__file__).resolve().parent.parent
FAKE_PLUGIN_SOURCE = ROOT / "tests" / "fixtures" / "fake-plugin"


@dataclass(frozen=True)
class Completed:
    """A finished ``novacron`` subprocess."""

    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """stdout as JSON."""
        return json.loads(self.stdout)


def clean_env(tmp: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment minus every NOVACRON_* variable, with private state dirs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOVACRON_")}
    env.pop("PYTHONPATH", None)
    env["XDG_STATE_HOME"] = str(tmp / "xdg-state")
    env["XDG_CONFIG_HOME"] = str(tmp / "xdg-config")
    env["HOME"] = str(tmp / "home")
    env["PYTHONWARNINGS"] = "error"
    env.update(extra or {})
    return env


def run_python(
    args: list[str], *, env: Mapping[str, str], cwd: Path, timeout: float = 120
) -> Completed:
    """Run ``python <args>`` with ``env`` and return what it printed."""
    proc = subprocess.run(
        [sys.executable, *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Completed(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session")
def fake_plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the real, pip-installed ``novacron-fakeplugin`` (once per session)."""
    target = tmp_path_factory.mktemp("fake-plugin-site")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-cache-dir",
            "--target",
            str(target),
            str(FAKE_PLUGIN_SOURCE),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, f"pip install of the fake plugin failed:\n{proc.stderr}"
    assert (target / "novacron_fakeplugin" / "hooks.py").is_file()
    return target


@pytest.fixture
def novacron_subprocess(tmp_path: Path) -> Callable[..., Completed]:
    """Run ``python -m novacron_sdk ARGS`` in a clean environment (plus ``env`` extras)."""

    def run(*argv: str, env: Mapping[str, str] | None = None) -> Completed:
        return run_python(["-m", "novacron_sdk", *argv], env=clean_env(tmp_path, env), cwd=tmp_path)

    return run


@pytest.fixture
def python_subprocess(tmp_path: Path) -> Callable[..., Completed]:
    """Run ``python ARGS`` in a clean environment (plus ``env`` extras), in ``tmp_path``."""

    def run(*argv: str, env: Mapping[str, str] | None = None) -> Completed:
        return run_python(list(argv), env=clean_env(tmp_path, env), cwd=tmp_path)

    return run


@pytest.fixture
def subprocess_env(tmp_path: Path) -> Callable[..., dict[str, str]]:
    """Build the clean environment the subprocess fixtures use (plus ``extra``)."""

    def build(extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return clean_env(tmp_path, extra)

    return build


@pytest.fixture
def with_fake_plugin(fake_plugin_path: Path) -> dict[str, str]:
    """Environment additions that make the installed fake plugin importable."""
    return {"PYTHONPATH": str(fake_plugin_path)}


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start real ``novacron agent`` subprocesses on 127.0.0.1 (free ports); returns URLs.

    Each agent gets its own directory (state, config home), so two agents are two hosts.
    All are terminated after the test.
    """
    procs: list[subprocess.Popen[str]] = []

    def start(name: str = "agent", *args: str, env: Mapping[str, str] | None = None) -> str:
        home = tmp_path / name
        home.mkdir()
        ready = home / "ready.json"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "novacron_sdk",
                "agent",
                "--port",
                "0",
                "--name",
                name,
                "--ready-file",
                str(ready),
                *args,
            ],
            env=clean_env(home, env),
            cwd=home,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        deadline = time.monotonic() + 60
        while not (ready.is_file() and ready.read_text().strip()):
            if proc.poll() is not None:
                assert proc.stderr is not None
                pytest.fail(f"agent {name} exited with {proc.returncode}: {proc.stderr.read()}")
            if time.monotonic() > deadline:
                pytest.fail(f"agent {name} did not become ready within 60 s")
            time.sleep(0.05)
        return str(json.loads(ready.read_text())["url"])

    yield start
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.fixture
def small_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine that cannot map more than 256 MiB at once (below the sim host's capacity).

    A boundary that cannot run here for real (this VM has 24 GiB and overcommits): anonymous
    ``mmap`` calls above 256 MiB fail with ENOMEM, as on a small host.
    """
    real = mmap.mmap

    def limited(fileno: int, length: int) -> mmap.mmap:
        if length > 256 * 1024 * 1024:
            raise OSError(errno.ENOMEM, "Cannot allocate memory")
        return real(fileno, length)

    monkeypatch.setattr(mmap, "mmap", limited)


@pytest.fixture
async def drivers() -> AsyncIterator[tuple[SimDriver, SimDriver]]:
    """Two sim drivers, "src" and "dst", closed after the test."""
    src = SimDriver({"host_name": "src"})
    dst = SimDriver({"host_name": "dst"})
    yield src, dst
    await src.close()
    await dst.close()
