"""Regression tests for the core-plumbing review: config, plugin manager, client, CLI, init.

Each test reproduces one confirmed bug and fails without its fix. No mocks; the only fault
injectors are tiny plugin objects whose hooks raise, drivers whose ``close()`` raises and
components whose ``start()`` raises, each named in its test's docstring.
"""

from __future__ import annotations

import base64
import json
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from novacron_sdk.client import AsyncClient
from novacron_sdk.config import NovaCronConfig, load_config
from novacron_sdk.errors import NovaCronError, PluginError
from novacron_sdk.init import Component, InitContext, Orchestrator
from novacron_sdk.plugin import hookimpl
from novacron_sdk.plugin.manager import NovaCronPluginManager, build_plugin_manager


def _plugin(**hooks: Callable[..., Any]) -> types.SimpleNamespace:
    """A plugin object whose ``novacron_*`` attributes are the given hook implementations."""
    plugin = types.SimpleNamespace()
    for name, function in hooks.items():
        setattr(plugin, name, hookimpl(function))
    return plugin


def _manager(*plugins: tuple[str, object]) -> NovaCronPluginManager:
    return build_plugin_manager(autoload=False, plugins=plugins, environ={})


# -- 1. config show masks secrets ------------------------------------------------------------
def test_config_show_masks_secrets_in_yaml_and_json(novacron_cli, monkeypatch):
    monkeypatch.setenv("NOVACRON_DRIVERS__SETTINGS__AWS__SECRET_ACCESS_KEY", "hunter2")
    monkeypatch.setenv("NOVACRON_DRIVERS__SETTINGS__AWS__REGION", "eu-west-1")
    shown = novacron_cli("config", "show")
    assert shown.exit_code == 0, shown.stderr
    assert "hunter2" not in shown.stdout
    assert "secret_access_key: '***'" in shown.stdout
    assert "region: eu-west-1" in shown.stdout
    as_json = novacron_cli("config", "show", "--json")
    assert as_json.exit_code == 0, as_json.stderr
    aws = json.loads(as_json.stdout)["config"]["drivers"]["settings"]["aws"]
    assert aws == {"secret_access_key": "***", "region": "eu-west-1"}


def test_redact_masks_every_secret_looking_key_but_not_unset_ones():
    from novacron_sdk.config.loader import redact_secrets

    data = {
        "a": {"password": "p", "api_token": 3, "Client_Secret": "c", "private_key": "k"},
        "b": [{"credentials": {"user": "u"}}, {"name": "n"}],
        "c": {"token": None, "secret": ""},
    }
    assert redact_secrets(data) == {
        "a": {"password": "***", "api_token": "***", "Client_Secret": "***", "private_key": "***"},
        "b": [{"credentials": "***"}, {"name": "n"}],
        "c": {"token": None, "secret": ""},
    }


# -- 2. YAML aliases -------------------------------------------------------------------------
def test_override_does_not_leak_through_yaml_alias(tmp_path):
    path = tmp_path / "n.yaml"
    path.write_text("drivers:\n  settings:\n    sim: &c {state_path: /a.json}\n    libvirt: *c\n")
    config = load_config(path, environ={"NOVACRON_DRIVERS__SETTINGS__SIM__STATE_PATH": "/b.json"})
    settings = config.as_dict()["drivers"]["settings"]
    assert settings["sim"]["state_path"] == "/b.json"
    assert settings["libvirt"]["state_path"] == "/a.json"


# -- 3. AsyncClient.aclose -------------------------------------------------------------------
async def test_aclose_closes_every_driver_even_if_one_fails(tmp_path):
    """Fault injector: sim driver subclass ``d1`` whose ``close()`` raises RuntimeError."""
    from novacron_sdk.builtin.sim.driver import SimDriver

    closed: list[str] = []

    def driver(name: str, *, fail: bool) -> type[SimDriver]:
        class Closing(SimDriver):
            async def close(self) -> None:
                closed.append(name)
                if fail:
                    raise RuntimeError(f"{name} close failed")
                await super().close()

        Closing.name = name
        return Closing

    def novacron_register_hypervisors(registry):
        registry.register("d1", driver("d1", fail=True))
        registry.register("d2", driver("d2", fail=False))

    pm = _manager(("closers", _plugin(novacron_register_hypervisors=novacron_register_hypervisors)))
    overrides = {
        "drivers.settings": {
            "d1": {"state_path": str(tmp_path / "1.json")},
            "d2": {"state_path": str(tmp_path / "2.json")},
        }
    }
    config = load_config(None, plugins=pm, environ={}, overrides=overrides)
    client = AsyncClient(config=config, plugins=pm)
    client.driver("d1")
    client.driver("d2")
    with pytest.raises(RuntimeError, match="d1 close failed"):
        await client.aclose()
    assert sorted(closed) == ["d1", "d2"]


# -- 9. config checks keep going past a broken lazy reference --------------------------------
@pytest.mark.parametrize("kind", ["transports", "codecs"])
def test_plugin_problems_lists_everything_despite_a_broken_lazy_reference(tmp_path, kind):
    """Fault injector: a plugin registering a lazy reference to a module that does not exist."""
    from novacron_sdk.config.checks import plugin_problems

    def register(registry):
        registry.register("broken", "missing_sdk_xyz.mod:T")

    hook = f"novacron_register_{kind}"
    pm = _manager(("brokenref", _plugin(**{hook: register})))
    path = tmp_path / "n.yaml"
    path.write_text(f"drivers:\n  default: simm\n{kind}:\n  settings:\n    broken: {{}}\n")
    problems = plugin_problems(load_config(path, plugins=pm, environ={}), pm)
    assert any("simm" in p for p in problems), problems
    assert any("broken" in p and "line 5" in p and "missing_sdk_xyz" in p for p in problems)


# -- 10. --json PATH and the state directory -------------------------------------------------
@pytest.mark.parametrize("command", [["demo"], ["migrate", "vm", "--to", "http://127.0.0.1:9"]])
def test_bad_json_path_is_a_usage_error_before_any_work(novacron_cli, tmp_path, command):
    target = tmp_path / "missing" / "r.json"
    result = novacron_cli(*command, "--json", str(target))
    assert result.exit_code == 2
    assert "argument --json" in result.stderr
    assert str(target.parent) in result.stderr
    assert "unexpected" not in result.stderr
    assert "started agents" not in result.stdout


def test_json_path_under_a_file_is_a_usage_error(novacron_cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = novacron_cli("demo", "--json", str(blocker / "r.json"))
    assert result.exit_code == 2
    assert "is not a directory" in result.stderr


def test_report_write_failure_is_a_novacron_error_naming_the_path(tmp_path):
    from novacron_sdk.cli.commands.migration import _write
    from novacron_sdk.migration.models import MigrationSettings

    target = tmp_path / "gone" / "r.json"
    with pytest.raises(NovaCronError, match="could not write the migration report") as info:
        _write(str(target), MigrationSettings())
    assert str(target) in str(info.value)


@pytest.mark.slow
def test_demo_report_write_failure_names_the_path(tmp_path):
    """The directory of ``json_path`` is missing at write time (run_demo skips the CLI check)."""
    from novacron_sdk.migration.demo import DemoOptions, run_demo

    target = tmp_path / "gone" / "r.json"
    options = DemoOptions(memory_mib=16, rate_mbps=0, warmup_s=0, progress=False, json_path=target)
    with pytest.raises(NovaCronError, match="report could not be written") as info:
        run_demo(options)
    assert str(target) in str(info.value)


def test_state_home_that_is_a_file_is_a_clear_error(novacron_cli, tmp_path, monkeypatch):
    blocker = tmp_path / "notadir"
    blocker.write_text("")
    monkeypatch.setenv("XDG_STATE_HOME", str(blocker))
    result = novacron_cli("vm", "list")
    assert result.exit_code == 2, result.stderr
    assert "unexpected" not in result.stderr
    assert str(blocker / "novacron") in result.stderr
    assert "XDG_STATE_HOME" in result.stderr


# -- 4. registration order -------------------------------------------------------------------
def _codec_plugin(tag: str, *names: str) -> types.SimpleNamespace:
    def novacron_register_codecs(registry):
        for name in names:
            registry.register(name, f"{tag}.mod:C", priority=10)

    return _plugin(novacron_register_codecs=novacron_register_codecs)


def test_priority_tie_goes_to_first_registered_plugin():
    pm = _manager(
        ("first", _codec_plugin("first", "c-first")),
        ("second", _codec_plugin("second", "c-second")),
    )
    assert pm.codecs.default_name() == "c-first"
    assert pm.codecs.names()[-2:] == ["c-first", "c-second"]


def test_duplicate_name_stays_with_the_first_registered_plugin():
    pm = _manager(
        ("first", _codec_plugin("first", "shared")),
        ("second", _codec_plugin("second", "shared")),
    )
    assert pm.codecs.entry("shared").plugin == "first"
    infos = {i.name: i for i in pm.plugins()}
    assert infos["first"].status == "loaded"
    assert infos["second"].status == "failed"


def test_essential_builtins_still_register_first():
    pm = _manager(("claimer", _codec_plugin("claimer", "zlib")))
    assert pm.codecs.entry("zlib").plugin.startswith("builtin-")
    assert {i.name: i for i in pm.plugins()}["claimer"].status == "failed"


# -- 5. a plugin failing in one registration hook --------------------------------------------
def _half_plugin() -> types.SimpleNamespace:
    """Fault injector: registers a hypervisor, then raises in its transports hook."""

    def novacron_register_hypervisors(registry):
        registry.register("half", "nowhere:X")

    def novacron_register_transports(registry):
        raise RuntimeError("boom")

    return _plugin(
        novacron_register_hypervisors=novacron_register_hypervisors,
        novacron_register_transports=novacron_register_transports,
    )


@pytest.mark.parametrize("first", ["hypervisors", "transports"])
def test_failed_plugin_provides_nothing_whichever_registry_is_read_first(first):
    pm = _manager(("half", _half_plugin()))
    pm.registry(first)
    assert "half" not in pm.hypervisors
    info = {i.name: i for i in pm.plugins()}["half"]
    assert info.status == "failed"
    assert "boom" in (info.error or "")
    assert info.registered == {}


def test_late_plugin_failing_in_one_hook_is_dropped_everywhere():
    """Fault injector: ``_half_plugin`` registered after the registries were built."""
    pm = _manager()
    pm.plugins()  # every registry built
    assert not pm.register_plugin("half", _half_plugin())
    assert "half" not in pm.hypervisors


# -- 6. a plugin name used twice -------------------------------------------------------------
def test_duplicate_plugin_name_does_not_rewrite_first_plugins_status():
    def novacron_register_clouds(registry):
        registry.register("acloud", "x.y:Z")

    first = _plugin(novacron_register_clouds=novacron_register_clouds)
    pm = _manager(("dup", first), ("dup", types.SimpleNamespace()))
    assert "acloud" in pm.clouds
    infos = pm.plugins()
    original = next(i for i in infos if i.name == "dup")
    assert original.status == "loaded"
    assert original.error is None
    clash = [i for i in infos if i.name != "dup" and i.name.startswith("dup")]
    assert len(clash) == 1
    assert clash[0].status == "failed"
    assert "'dup'" in (clash[0].error or "")
    assert "already taken" in (clash[0].error or "")


def test_builtin_info_survives_a_plugin_reusing_its_name():
    pm = _manager(("builtin-compute", types.SimpleNamespace()))
    info = {i.name: i for i in pm.plugins()}["builtin-compute"]
    assert info.essential
    assert info.status == "loaded"
    assert info.error is None


# -- 7. call_decision names the failing plugin -----------------------------------------------
def test_call_decision_names_the_failing_plugin():
    """Fault injector: plugin ``raiser`` whose decision hook raises KeyError."""
    from novacron_sdk.migration.models import MigrationSettings

    def novacron_choose_predictor(settings):
        raise KeyError("oops")

    pm = _manager(("raiser", _plugin(novacron_choose_predictor=novacron_choose_predictor)))
    with pytest.raises(PluginError) as info:
        pm.call_decision("novacron_choose_predictor", settings=MigrationSettings())
    assert str(info.value) == (
        "plugin 'raiser' failed in novacron_choose_predictor: KeyError: 'oops'"
    )
    assert isinstance(info.value.__cause__, KeyError)


def test_call_decision_keeps_pluggy_order_and_first_result():
    from novacron_sdk.migration.models import MigrationSettings

    calls: list[str] = []

    def decider(tag: str, answer: str | None) -> types.SimpleNamespace:
        def novacron_choose_predictor(settings):
            calls.append(tag)
            return answer

        return _plugin(novacron_choose_predictor=novacron_choose_predictor)

    pm = _manager(("a", decider("a", "ewma")), ("b", decider("b", None)), ("c", decider("c", None)))
    assert pm.call_decision("novacron_choose_predictor", settings=MigrationSettings()) == "ewma"
    assert calls == ["c", "b", "a"]


# -- 8. entry points with the same name ------------------------------------------------------
def _dist(root: Path, dist: str, ep_name: str, module: str, cloud: str) -> None:
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[novacron_sdk]\n{ep_name} = {module}\n")
    (root / f"{module}.py").write_text(
        "from novacron_sdk.plugin import hookimpl\n"
        "@hookimpl\n"
        "def novacron_register_clouds(registry):\n"
        f"    registry.register({cloud!r}, '{module}:X')\n"
    )


def test_clashing_entry_point_names_are_listed_as_failed(tmp_path, monkeypatch, caplog):
    _dist(tmp_path, "novacron-rvdup-one", "rvdupe", "rvdupmod_one", "rv-cloud-one")
    _dist(tmp_path, "novacron-rvdup-two", "rvdupe", "rvdupmod_two", "rv-cloud-two")
    _dist(tmp_path, "novacron-rvshadow", "builtin-core", "rvshadowmod", "rv-shadow")
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = build_plugin_manager(autoload=True, environ={})
    infos = pm.plugins()
    by_dist = {i.distribution: i for i in infos}
    assert by_dist["novacron-rvshadow"].status == "failed"
    assert "builtin-core" in (by_dist["novacron-rvshadow"].error or "")
    assert {i.name: i for i in infos}["builtin-core"].essential
    loaded = [d for d in ("novacron-rvdup-one", "novacron-rvdup-two") if d in by_dist]
    assert len(loaded) == 2, [(i.name, i.distribution) for i in infos]
    failed = [by_dist[d] for d in loaded if by_dist[d].status == "failed"]
    assert len(failed) == 1
    assert "'rvdupe'" in (failed[0].error or "")
    assert "rv-shadow" not in pm.clouds
    assert "already taken" in caplog.text


# -- 11. !!binary in config show; BaseException from a component's start() -------------------
def test_config_show_handles_binary_values(novacron_cli, tmp_path):
    path = tmp_path / "bin.yaml"
    path.write_text("drivers:\n  settings:\n    sim:\n      blob: !!binary /w==\n")
    shown = novacron_cli("--config", str(path), "config", "show", "--json")
    assert shown.exit_code == 0, shown.stderr
    blob = json.loads(shown.stdout)["config"]["drivers"]["settings"]["sim"]["blob"]
    assert base64.b64decode(blob) == b"\xff"
    assert novacron_cli("--config", str(path), "config", "show").exit_code == 0


@pytest.mark.parametrize("error", [SystemExit(3), KeyboardInterrupt()])
async def test_started_components_stop_when_start_raises_base_exception(error):
    """Fault injector: component ``b`` whose ``start()`` raises SystemExit/KeyboardInterrupt."""
    stopped: list[str] = []

    class A(Component):
        async def start(self) -> None:
            pass

        async def stop(self) -> None:
            stopped.append("a")

    class B(Component):
        depends_on: ClassVar[tuple[str, ...]] = ("a",)

        async def start(self) -> None:
            raise error

    context = InitContext(config=NovaCronConfig({}), plugins=NovaCronPluginManager())
    orchestrator = Orchestrator({"a": A, "b": B}, context)
    with pytest.raises(type(error)):
        await orchestrator.start()
    assert stopped == ["a"]
