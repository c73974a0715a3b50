"""The pytest11 plugin of novacron-sdk: fixtures for plugin authors (see novacron_sdk.testing).

It imports nothing heavy at collection: the SDK modules each fixture needs are imported when
the fixture runs, and the contract suites are never imported here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import pytest

if TYPE_CHECKING:
    from novacron_sdk.builtin.sim.driver import SimDriver
    from novacron_sdk.config import NovaCronConfig
    from novacron_sdk.plugin.manager import NovaCronPluginManager


_F = TypeVar("_F", bound=Callable[..., Any])


class _FixtureDecorator(Protocol):
    def __call__(self, function: _F, /) -> _F: ...


def _async_fixture() -> _FixtureDecorator:
    # pytest loads this plugin in every session of an environment with novacron-sdk, so a
    # missing pytest-asyncio must not break collection; async fixtures then need it installed.
    try:
        import pytest_asyncio
    except ImportError:  # pragma: no cover - the test extra installs pytest-asyncio
        return cast("_FixtureDecorator", pytest.fixture)
    return cast("_FixtureDecorator", pytest_asyncio.fixture)


@dataclass(frozen=True)
class CliResult:
    """What one in-process ``novacron`` run produced."""

    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """``stdout`` parsed as JSON (for ``--json`` commands)."""
        return json.loads(self.stdout)


def write_test_config(directory: Path, extra: dict[str, Any] | None = None) -> Path:
    """Write a ``novacron.yaml`` whose state files all live in ``directory``; return its path.

    ``extra`` sections are merged over the defaults (one level deep per section).
    """
    data: dict[str, Any] = {
        "drivers": {"settings": {"sim": {"state_path": str(directory / "sim-vms.json")}}},
        "state": {"settings": {"path": str(directory / "state.sqlite3")}},
    }
    for section, values in (extra or {}).items():
        data.setdefault(section, {}).update(values)
    path = directory / "novacron.yaml"
    # JSON is YAML: no YAML writer needed, and the file stays readable.
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def novacron_plugins() -> NovaCronPluginManager:
    """A fresh plugin manager: builtins plus every installed plugin (autoload on)."""
    from novacron_sdk.plugin.manager import build_plugin_manager

    return build_plugin_manager(autoload=True)


@pytest.fixture
def novacron_config_path(tmp_path: Path) -> Path:
    """A config file with the default settings and every state file under ``tmp_path``."""
    directory = tmp_path / "novacron"
    directory.mkdir(exist_ok=True)
    return write_test_config(directory)


@pytest.fixture
def novacron_config(
    novacron_plugins: NovaCronPluginManager, novacron_config_path: Path
) -> NovaCronConfig:
    """The merged configuration of ``novacron_config_path``, ignoring the caller's environment."""
    from novacron_sdk.config import load_config

    return load_config(novacron_config_path, plugins=novacron_plugins, environ={})


@_async_fixture()
async def sim_driver(tmp_path: Path) -> AsyncIterator[SimDriver]:
    """A builtin sim hypervisor with its VM records in ``tmp_path``; closed after the test."""
    from novacron_sdk.builtin.sim.driver import SimDriver

    driver = SimDriver({"state_path": str(tmp_path / "sim-vms.json")})
    try:
        yield driver
    finally:
        await driver.close()


@pytest.fixture
def novacron_cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Callable[..., CliResult]:
    """Run ``novacron`` in-process and capture its output.

    ``XDG_STATE_HOME`` points into ``tmp_path`` so the sim's default state file is private to
    the test. Call it as ``novacron_cli("vm", "list", "--json")``.
    """
    from novacron_sdk.cli.main import main

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))

    def run(*argv: str) -> CliResult:
        """Run ``novacron *argv`` and return its exit code and captured output."""
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
