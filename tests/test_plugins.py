"""Entry-point discovery for real: the pip-installed fake plugin distribution, in subprocesses.

``novacron-fakeplugin`` (tests/fixtures/fake-plugin) ships one good plugin (``fake``) and three
broken ones (``fakebroken``: import error, ``fakedup``: duplicate name ``sim``, ``fakebadhook``:
misspelt hook). Each failure must be reported by name with its reason while the rest work.
"""

from __future__ import annotations

from pathlib import Path

import pytest

FAKE_PLUGINS = ("fake", "fakebroken", "fakedup", "fakebadhook")
BUILTINS = ("builtin-compute", "builtin-dataplane", "builtin-state", "builtin-core")


def _by_name(listing: list[dict]) -> dict[str, dict]:
    return {p["name"]: p for p in listing}


@pytest.fixture
def listing(novacron_subprocess, with_fake_plugin) -> dict[str, dict]:
    result = novacron_subprocess("plugins", "list", "--json", env=with_fake_plugin)
    assert result.exit_code == 0, result.stderr
    return _by_name(result.json())


def test_good_plugin_is_discovered_with_its_registrations(listing):
    fake = listing["fake"]
    assert fake["status"] == "loaded"
    assert fake["distribution"] == "novacron-fakeplugin"
    assert fake["version"] == "0.0.1"
    assert fake["essential"] is False
    assert set(fake["hooks"]) == {
        "novacron_register_hypervisors",
        "novacron_add_config_sections",
        "novacron_add_cli_commands",
    }
    assert fake["registered"] == {
        "hypervisors": ["fake", "fake-heavy"],
        "config_sections": ["fake"],
        "cli_commands": ["fake-hello"],
    }
    assert fake["error"] is None


def test_import_failure_is_reported_by_name_with_reason(listing):
    broken = listing["fakebroken"]
    assert broken["status"] == "failed"
    assert "novacron_fakeplugin.broken" in broken["error"]
    assert "fake-cloud-sdk" in broken["error"]


def test_duplicate_name_is_reported_and_the_builtin_keeps_it(listing):
    dup = listing["fakedup"]
    assert dup["status"] == "failed"
    assert "'sim'" in dup["error"]
    assert "registered twice" in dup["error"]
    assert listing["builtin-compute"]["registered"]["hypervisors"] == ["sim"]
    assert "hypervisors" not in dup["registered"]


def test_misspelt_hook_is_reported(listing):
    bad = listing["fakebadhook"]
    assert bad["status"] == "failed"
    assert "novacron_regster_hypervisors" in bad["error"]


def test_builtins_are_loaded_and_essential(listing):
    for name in BUILTINS:
        assert listing[name]["status"] == "loaded"
        assert listing[name]["essential"] is True
        assert listing[name]["distribution"] == "novacron-sdk"


def test_table_output_names_every_failure(novacron_subprocess, with_fake_plugin):
    result = novacron_subprocess("plugins", "list", env=with_fake_plugin)
    assert result.exit_code == 0, result.stderr
    for name in (*FAKE_PLUGINS, *BUILTINS):
        assert name in result.stdout
    assert "fake-cloud-sdk" in result.stdout


@pytest.mark.slow
def test_failed_plugins_do_not_stop_sim_and_fake_drivers(novacron_subprocess, with_fake_plugin):
    fake = novacron_subprocess(
        "vm", "create", "web-1", "--driver", "fake", "--json", env=with_fake_plugin
    )
    assert fake.exit_code == 0, fake.stderr
    assert fake.json()["driver"] == "fake"
    assert fake.json()["state"] == "running"

    sim = novacron_subprocess(
        "vm", "create", "db-1", "--driver", "sim", "--json", env=with_fake_plugin
    )
    assert sim.exit_code == 0, sim.stderr
    listed = novacron_subprocess("vm", "list", "--driver", "sim", "--json", env=with_fake_plugin)
    assert listed.exit_code == 0, listed.stderr
    assert [vm["name"] for vm in listed.json()] == ["db-1"]


@pytest.mark.slow
def test_plugin_cli_command_and_config_section(novacron_subprocess, with_fake_plugin):
    hello = novacron_subprocess("fake-hello", "--name", "tests", env=with_fake_plugin)
    assert hello.exit_code == 0, hello.stderr
    assert hello.stdout.strip() == "hello from the fake plugin, tests"
    custom = novacron_subprocess("--set", "fake.greeting=hi", "fake-hello", env=with_fake_plugin)
    assert custom.exit_code == 0, custom.stderr
    assert custom.stdout.strip() == "hi, world"
    schema = novacron_subprocess("config", "schema", env=with_fake_plugin)
    assert schema.exit_code == 0, schema.stderr
    assert "fake" in schema.json()["properties"]


@pytest.mark.parametrize(
    ("disabled", "expect_disabled"),
    [
        ("fakebroken,fakedup", {"fakebroken", "fakedup"}),
        (" fakebadhook , fakebroken ", {"fakebadhook", "fakebroken"}),
        ("fake*", set(FAKE_PLUGINS)),
        ("novacron-fakeplugin", set(FAKE_PLUGINS)),
    ],
)
def test_disabled_plugins(novacron_subprocess, with_fake_plugin, disabled, expect_disabled):
    env = {**with_fake_plugin, "NOVACRON_DISABLED_PLUGINS": disabled}
    result = novacron_subprocess("plugins", "list", "--json", env=env)
    assert result.exit_code == 0, result.stderr
    plugins = _by_name(result.json())
    assert {n for n, p in plugins.items() if p["status"] == "disabled"} == expect_disabled
    for name in set(FAKE_PLUGINS) - expect_disabled:
        assert plugins[name]["status"] in ("loaded", "failed")
    for name in expect_disabled:
        assert plugins[name]["hooks"] == []
        assert plugins[name]["registered"] == {}


def test_disable_all_keeps_the_builtins(novacron_subprocess, with_fake_plugin):
    env = {**with_fake_plugin, "NOVACRON_DISABLED_PLUGINS": "*"}
    result = novacron_subprocess("plugins", "list", "--json", env=env)
    assert result.exit_code == 0, result.stderr
    plugins = _by_name(result.json())
    for name in BUILTINS:
        assert plugins[name]["status"] == "loaded"
    others = {n: p["status"] for n, p in plugins.items() if n not in BUILTINS}
    assert set(FAKE_PLUGINS) <= set(others)
    assert set(others.values()) == {"disabled"}
    drivers = novacron_subprocess("drivers", "list", "--json", env=env)
    assert [d["name"] for d in drivers.json()] == ["sim"]


def test_disable_autoload(novacron_subprocess, with_fake_plugin):
    env = {**with_fake_plugin, "NOVACRON_DISABLE_PLUGIN_AUTOLOAD": "1"}
    result = novacron_subprocess("plugins", "list", "--json", env=env)
    assert result.exit_code == 0, result.stderr
    assert sorted(p["name"] for p in result.json()) == sorted(BUILTINS)


@pytest.mark.slow
def test_listing_never_imports_a_heavy_module(tmp_path: Path, python_subprocess, with_fake_plugin):
    script = (
        "import json, sys\n"
        "from novacron_sdk.cli.main import main\n"
        "from novacron_sdk.plugin.manager import build_plugin_manager\n"
        "pm = build_plugin_manager()\n"
        "infos = pm.plugins()\n"
        "code = main(['plugins', 'list', '--json'])\n"
        "code += main(['drivers', 'list', '--json'])\n"
        "heavy = 'novacron_fakeplugin.heavy' in sys.modules\n"
        "sys.stderr.write(json.dumps({'code': code, 'heavy': heavy}) + '\\n')\n"
    )
    marker = tmp_path / "heavy-imported"
    env = {**with_fake_plugin, "NOVACRON_FAKE_HEAVY_MARKER": str(marker)}
    result = python_subprocess("-c", script, env=env)
    assert result.exit_code == 0, result.stderr
    assert '{"code": 0, "heavy": false}' in result.stderr
    assert not marker.exists()

    # The marker does work: resolving features on purpose imports the heavy module.
    features = python_subprocess(
        "-m", "novacron_sdk", "drivers", "list", "--features", "--json", env=env
    )
    assert features.exit_code == 0, features.stderr
    assert marker.exists()
    heavy = next(d for d in features.json() if d["name"] == "fake-heavy")
    assert heavy["features"] == ["create", "destroy", "reboot", "start_stop"]


def test_drivers_list_shows_features_only_for_builtins(novacron_subprocess, with_fake_plugin):
    result = novacron_subprocess("drivers", "list", "--json", env=with_fake_plugin)
    assert result.exit_code == 0, result.stderr
    drivers = {d["name"]: d for d in result.json()}
    assert drivers["fake"]["plugin"] == "fake"
    assert drivers["fake"]["kind"] == "hypervisor"
    assert drivers["fake"]["features"] is None
    assert drivers["sim"]["plugin"] == "builtin-compute"
    assert "create" in drivers["sim"]["features"]


def test_status_reports_plugin_failures(novacron_subprocess, with_fake_plugin):
    result = novacron_subprocess("status", "--json", env=with_fake_plugin)
    assert result.exit_code == 0, result.stderr
    status = result.json()
    failed = {f["name"]: f["error"] for f in status["failures"]}
    assert {"fakebroken", "fakedup", "fakebadhook"} <= set(failed)
    assert "fake" not in failed
    assert "fake-cloud-sdk" in failed["fakebroken"]
    for name in ("sim", "fake", "fake-heavy"):
        assert status["drivers"][name] == "hypervisor"
    table = novacron_subprocess("status", env=with_fake_plugin)
    assert table.exit_code == 0, table.stderr
    assert f"({len(failed)} failed)" in table.stdout
    assert "warning: plugin 'fakebroken' failed" in table.stderr
