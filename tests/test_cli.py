"""The ``novacron`` CLI: every core command, in-process and in real subprocesses."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from novacron_sdk.__about__ import __version__

CORE_COMMANDS = ("plugins", "drivers", "vm", "config", "status")


# -- global behaviour ----------------------------------------------------------------------
def test_help_lists_every_core_command(novacron_cli):
    result = novacron_cli("--help")
    assert result.exit_code == 0
    for name in (*CORE_COMMANDS, "agent", "migrate", "demo"):
        assert f"    {name} " in result.stdout
    assert "--set SECTION.KEY=VALUE" in result.stdout


HEAVY_AT_HELP = ("rich", "httpx", "starlette", "uvicorn", "prometheus_client")


def test_help_imports_no_heavy_library(python_subprocess):
    script = (
        "import sys\n"
        "from novacron_sdk.cli.main import main\n"
        "code = main(['--help'])\n"
        f"heavy = sorted(m for m in {HEAVY_AT_HELP!r} if m in sys.modules)\n"
        "sys.stderr.write(f'code={code} heavy={heavy}\\n')\n"
    )
    result = python_subprocess("-c", script)
    assert result.exit_code == 0, result.stderr
    assert "code=0 heavy=[]" in result.stderr


def test_version(novacron_cli):
    result = novacron_cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"novacron {__version__}"


def test_no_command_is_a_usage_error(novacron_cli):
    result = novacron_cli()
    assert result.exit_code == 2
    assert "usage: novacron" in result.stderr


def test_unknown_command_is_a_usage_error(novacron_cli):
    result = novacron_cli("teleport")
    assert result.exit_code == 2
    assert "invalid choice: 'teleport'" in result.stderr


def test_bad_set_option(novacron_cli):
    result = novacron_cli("--set", "nodot=1", "config", "show")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --set 'nodot=1' is not SECTION.KEY=VALUE")


def test_novacron_error_is_one_line_exit_2(novacron_subprocess, with_fake_plugin):
    env = {**with_fake_plugin, "NOVACRON_DISABLED_PLUGINS": "fakedup"}
    result = novacron_subprocess("fake-hello", "--fail", "novacron", env=env)
    assert result.exit_code == 2
    assert "error: fake-hello failed on purpose; pass no --fail\n" in result.stderr
    assert "Traceback" not in result.stderr


def test_unexpected_error_exit_1_with_hint_and_traceback_only_with_verbose(
    novacron_subprocess, with_fake_plugin
):
    env = {**with_fake_plugin, "NOVACRON_DISABLED_PLUGINS": "fakedup"}
    quiet = novacron_subprocess("fake-hello", "--fail", "unexpected", env=env)
    assert quiet.exit_code == 1
    assert "error: unexpected RuntimeError: fake-hello crashed on purpose" in quiet.stderr
    assert "rerun with -v" in quiet.stderr
    assert "Traceback" not in quiet.stderr
    loud = novacron_subprocess("-v", "fake-hello", "--fail", "unexpected", env=env)
    assert loud.exit_code == 1
    assert "Traceback" in loud.stderr
    assert "RuntimeError: fake-hello crashed on purpose" in loud.stderr


# -- plugins and drivers -------------------------------------------------------------------
def test_plugins_list_json_and_table(novacron_cli):
    listed = novacron_cli("plugins", "list", "--json")
    assert listed.exit_code == 0, listed.stderr
    core = {p["name"]: p for p in listed.json()}["builtin-core"]
    assert set(CORE_COMMANDS) <= set(core["registered"]["cli_commands"])
    assert "novacron_add_cli_commands" in core["hooks"]
    table = novacron_cli("plugins", "list")
    assert table.exit_code == 0
    assert "builtin-core" in table.stdout
    assert "add_cli_commands" in table.stdout


def test_drivers_list(novacron_cli):
    listed = novacron_cli("drivers", "list", "--json")
    assert listed.exit_code == 0, listed.stderr
    sim = {d["name"]: d for d in listed.json()}["sim"]
    assert sim["kind"] == "hypervisor"
    assert sim["plugin"] == "builtin-compute"
    assert {"create", "live_migration_source", "live_migration_sink"} <= set(sim["features"])
    table = novacron_cli("drivers", "list")
    assert "sim" in table.stdout
    assert "live_migration_source" in table.stdout


# -- vm ------------------------------------------------------------------------------------
def test_vm_lifecycle(novacron_cli):
    created = novacron_cli(
        "vm",
        "create",
        "web-1",
        "--vcpus",
        "2",
        "--memory-mib",
        "64",
        "--workload",
        '{"pattern": "hot-set", "rate_mbps": 1}',
        "--json",
    )
    assert created.exit_code == 0, created.stderr
    vm = created.json()
    assert (vm["name"], vm["state"], vm["vcpus"], vm["memory_mib"]) == ("web-1", "running", 2, 64)

    listed = novacron_cli("vm", "list", "--json")
    assert [v["id"] for v in listed.json()] == [vm["id"]]
    assert novacron_cli("vm", "show", "web-1", "--json").json()["id"] == vm["id"]
    assert novacron_cli("vm", "stop", vm["id"], "--json").json()["state"] == "stopped"
    assert novacron_cli("vm", "start", vm["id"], "--json").json()["state"] == "running"
    assert novacron_cli("vm", "reboot", "web-1", "--json").json()["state"] == "running"

    table = novacron_cli("vm", "list")
    assert "web-1" in table.stdout
    assert "running" in table.stdout
    shown = novacron_cli("vm", "show", "web-1", "--driver", "sim")
    assert vm["id"] in shown.stdout

    destroyed = novacron_cli("vm", "destroy", "web-1")
    assert destroyed.exit_code == 0
    assert destroyed.stdout.strip() == "destroyed web-1"
    assert novacron_cli("vm", "list", "--json").json() == []


def test_vm_errors(novacron_cli):
    missing = novacron_cli("vm", "show", "nope")
    assert missing.exit_code == 2
    assert missing.stderr.startswith("error: ")
    assert "nope" in missing.stderr
    bad_name = novacron_cli("vm", "create", "-bad name-")
    assert bad_name.exit_code == 2
    assert "invalid VM request: name" in bad_name.stderr
    bad_workload = novacron_cli("vm", "create", "ok", "--workload", "[1, 2]")
    assert bad_workload.exit_code == 2
    assert "--workload must be a JSON object" in bad_workload.stderr
    unknown = novacron_cli("vm", "list", "--driver", "nosuch")
    assert unknown.exit_code == 2
    assert "no compute driver named 'nosuch'; known: " in unknown.stderr


@pytest.mark.slow
def test_sim_vms_persist_across_cli_processes(novacron_subprocess, tmp_path: Path):
    created = novacron_subprocess("vm", "create", "db-1", "--json")
    assert created.exit_code == 0, created.stderr
    assert (tmp_path / "xdg-state" / "novacron" / "sim-vms.json").is_file()
    listed = novacron_subprocess("vm", "list", "--json")
    assert listed.exit_code == 0, listed.stderr
    assert [v["name"] for v in listed.json()] == ["db-1"]
    assert novacron_subprocess("vm", "destroy", "db-1").exit_code == 0
    assert novacron_subprocess("vm", "list", "--json").json() == []


def test_configured_sim_state_path_wins(novacron_cli, tmp_path: Path):
    state = tmp_path / "elsewhere.json"
    result = novacron_cli(
        "--set", f"drivers.settings.sim.state_path={state}", "vm", "create", "a1", "--json"
    )
    assert result.exit_code == 0, result.stderr
    assert state.is_file()
    assert not (tmp_path / "xdg-state" / "novacron" / "sim-vms.json").exists()


# -- config --------------------------------------------------------------------------------
@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "novacron.yaml"
    path.write_text("migration:\n  downtime_limit_ms: 150\ndrivers:\n  default: sim\n")
    return path


def test_config_show(novacron_cli, config_file: Path):
    shown = novacron_cli("--config", str(config_file), "config", "show", "--json")
    assert shown.exit_code == 0, shown.stderr
    data = shown.json()
    assert data["path"] == str(config_file)
    assert data["config"]["migration"]["downtime_limit_ms"] == 150
    overridden = novacron_cli(
        "--config",
        str(config_file),
        "--set",
        "migration.downtime_limit_ms=75",
        "config",
        "show",
        "--json",
    )
    assert overridden.json()["config"]["migration"]["downtime_limit_ms"] == 75
    text = novacron_cli("--config", str(config_file), "config", "show")
    assert text.stdout.startswith(f"# source: {config_file}\n")
    assert "downtime_limit_ms: 150" in text.stdout


def test_config_validate(novacron_cli, config_file: Path, tmp_path: Path):
    good = novacron_cli("config", "validate", str(config_file))
    assert good.exit_code == 0, good.stderr
    assert good.stdout.strip() == f"valid: {config_file}"
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text("migration:\n  downtime_limit_ms: -5\n  no_such_key: 1\n")
    bad = novacron_cli("config", "validate", str(bad_file))
    assert bad.exit_code == 2
    assert bad.stderr.startswith("error: invalid configuration")
    assert "migration.downtime_limit_ms" in bad.stderr
    assert "migration.no_such_key" in bad.stderr
    via_global = novacron_cli("--config", str(bad_file), "config", "validate")
    assert via_global.exit_code == 2
    missing = novacron_cli("config", "validate", str(tmp_path / "absent.yaml"))
    assert missing.exit_code == 2
    assert "does not exist" in missing.stderr


def test_config_validate_checks_the_names_and_settings_it_refers_to(novacron_cli, tmp_path: Path):
    """Names of drivers, transports, codecs and predictors, and the settings plugins reject,
    are reported by ``config validate`` (as the agent would at start), each with its line."""
    typos = tmp_path / "typos.yaml"
    typos.write_text(
        "migration:\n  codec: zlb\n  transport: udp\n  predictor: ewmaa\n"
        "drivers:\n  default: simm\n"
        "agent:\n  driver: nosuch\n"
        "codecs:\n  settings:\n    lz9: {level: 3}\n"
        "transports:\n  settings:\n    tcp: {max_frame_bytes: -1}\n"
    )
    result = novacron_cli("config", "validate", str(typos))
    assert result.exit_code == 2
    assert "invalid configuration (7 problems)" in result.stderr
    lines = result.stderr.splitlines()
    expected = {
        "line 2: migration.codec: no codec named 'zlb' (did you mean 'zlib'?)",
        "line 3: migration.transport: no transport named 'udp'",
        "line 4: migration.predictor: no predictor named 'ewmaa' (did you mean 'ewma'?)",
        "line 6: drivers.default: no compute driver named 'simm' (did you mean 'sim'?)",
        "line 8: agent.driver: no compute driver named 'nosuch'",
        "line 11: codecs.settings.lz9: no codec named 'lz9'",
        "line 14: transports.settings.tcp: tcp transport setting 'max_frame_bytes' must be",
    }
    for fragment in expected:
        assert any(fragment in line for line in lines), (fragment, result.stderr)
    assert "installed: " in result.stderr
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(
        "migration:\n  codec: zlib\n  transport: tcp\n  predictor: ewma\n"
        "transports:\n  settings:\n    tcp: {max_frame_bytes: 1048576}\n"
        "codecs:\n  settings:\n    zlib: {}\n"
    )
    good = novacron_cli("config", "validate", str(fixed))
    assert good.exit_code == 0, good.stderr
    assert good.stdout.strip() == f"valid: {fixed}"


def test_config_validate_checks_the_state_store_and_its_settings(novacron_cli, tmp_path: Path):
    """``state.store`` must name an installed store, and the store checks its settings
    (without opening anything: the sqlite file is not created)."""
    typo = tmp_path / "typo.yaml"
    typo.write_text("state:\n  store: sqlit\n")
    result = novacron_cli("config", "validate", str(typo))
    assert result.exit_code == 2
    assert "line 2: state.store: no state store named 'sqlit' (did you mean 'sqlite'?)" in (
        result.stderr
    )
    database = tmp_path / "state.db"
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"state:\n  settings:\n    path: {database}\n    history_revisions: 0\n")
    result = novacron_cli("config", "validate", str(bad))
    assert result.exit_code == 2
    assert "state.settings: state.settings.history_revisions must be a whole number" in (
        result.stderr
    )
    assert not database.exists()
    good = tmp_path / "good.yaml"
    good.write_text(f"state:\n  store: sqlite\n  settings:\n    path: {database}\n")
    result = novacron_cli("config", "validate", str(good))
    assert result.exit_code == 0, result.stderr
    assert not database.exists()


def test_validation_problems_name_unknown_keys_and_the_closest_one():
    """Plugin settings errors read as key: problem, with no pydantic URLs."""
    from pydantic import BaseModel, ConfigDict, ValidationError

    from novacron_sdk.config.checks import validation_problems

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid")
        resume_window_s: float = 1.0
        streams: int = 1

    with pytest.raises(ValidationError) as caught:
        Settings.model_validate({"resume_window": 5, "streams": "many"})
    text = validation_problems(caught.value, Settings, "x.")
    assert "x.resume_window: unknown key (did you mean 'resume_window_s'?)" in text
    assert "x.streams: Input should be a valid integer" in text
    assert "(got 'many')" in text
    assert "pydantic.dev" not in text


def test_config_schema(novacron_cli):
    result = novacron_cli("config", "schema")
    assert result.exit_code == 0, result.stderr
    schema = result.json()
    assert {"agent", "drivers", "migration", "state", "logging"} <= set(schema["properties"])


# -- status --------------------------------------------------------------------------------
def test_local_status(novacron_cli, config_file: Path, monkeypatch):
    # Builtins only: the result must not depend on which plugins this machine has installed.
    monkeypatch.setenv("NOVACRON_DISABLE_PLUGIN_AUTOLOAD", "1")
    result = novacron_cli("--config", str(config_file), "status", "--json")
    assert result.exit_code == 0, result.stderr
    status = result.json()
    assert status["config"] == str(config_file)
    assert status["drivers"]["sim"] == "hypervisor"
    assert status["failures"] == []
    assert status["plugins"] == 4
    table = novacron_cli("--config", str(config_file), "status")
    assert f"config: {config_file}" in table.stdout
    assert "sim" in table.stdout


@pytest.fixture
def real_agent(agent_factory) -> str:
    return agent_factory("host-a")


def test_status_of_real_agent(novacron_cli, real_agent):
    as_json = novacron_cli("status", "--agent", real_agent, "--json")
    assert as_json.exit_code == 0, as_json.stderr
    status = as_json.json()
    assert status["host"]["driver"] == "sim"
    assert {c["name"] for c in status["components"]} >= {"agent.api"}
    assert all(c["state"] == "running" for c in status["components"])
    table = novacron_cli("status", "--agent", real_agent)
    assert table.exit_code == 0, table.stderr
    assert f"agent {real_agent}: host" in table.stdout
    assert "agent.api" in table.stdout


class _JsonHandler(BaseHTTPRequestHandler):
    """Answers every GET with ``answer()``: (HTTP status, JSON document)."""

    def answer(self):
        raise NotImplementedError

    def do_GET(self):
        status, document = self.answer()
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _StatusHandler(_JsonHandler):
    document: dict = {}

    def answer(self):
        return (200 if self.path == "/v1/status" else 404), self.document


@pytest.fixture
def degraded_agent() -> Iterator[str]:
    """An HTTP server on 127.0.0.1 answering /v1/status with one degraded component."""
    _StatusHandler.document = {
        "host": {"id": "h1", "name": "h1", "driver": "sim", "vcpus": 8, "memory_mib": 16384},
        "components": [
            {
                "name": "agent.api",
                "state": "running",
                "critical": True,
                "error": None,
                "attempts": 1,
            },
            {
                "name": "metrics",
                "state": "degraded",
                "critical": False,
                "error": "port 9100 in use",
                "attempts": 3,
            },
        ],
        "vms": 2,
        "migrations": 1,
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StatusHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_status_of_agent_with_degraded_component(novacron_cli, degraded_agent):
    as_json = novacron_cli("status", "--agent", degraded_agent, "--json")
    assert as_json.exit_code == 0, as_json.stderr
    assert as_json.json()["components"][1]["state"] == "degraded"
    table = novacron_cli("status", "--agent", degraded_agent + "/")
    assert table.exit_code == 0, table.stderr
    assert "host h1 (sim), 8 vCPUs, 16384 MiB; 2 VMs, 1 migrations" in table.stdout
    assert "degraded" in table.stdout
    assert "port 9100 in use" in table.stdout


def test_status_of_unreachable_agent(novacron_cli, unused_tcp_port):
    result = novacron_cli("status", "--agent", f"http://127.0.0.1:{unused_tcp_port}")
    assert result.exit_code == 2
    assert "could not reach the agent" in result.stderr
    assert "is 'novacron agent' running there?" in result.stderr


class _DeniedHandler(_JsonHandler):
    """What a secured agent answers a request without credentials."""

    def answer(self):
        return 401, {"error": "authentication required", "kind": "SecurityError"}


def test_status_of_agent_requiring_authentication_says_how(novacron_cli, monkeypatch):
    monkeypatch.delenv("NOVACRON_SECURITY__ENABLED", raising=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DeniedHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        result = novacron_cli("status", "--agent", url)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert result.exit_code == 2
    assert f"the agent at {url} requires authentication: run with security enabled " in (
        result.stderr
    )
    assert "(--set security.enabled=true) and this node's key enrolled there" in result.stderr
    assert "answered 401" not in result.stderr


def test_drivers_table_says_when_features_depend_on_the_connection():
    """An empty class-level feature set (libvirt: per connection) is not shown as blank."""
    from novacron_sdk.cli.commands.drivers import _features_cell

    assert _features_cell(None) == "(--features)"
    assert _features_cell([]) == "(decided per connection)"
    assert _features_cell(["create", "pause"]) == "create, pause"
