"""Tests of the configuration loader: sources, precedence, errors and the schema."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel, ConfigDict, Field

from novacron_sdk.config import (
    NovaCronConfig,
    config_schema,
    default_config_paths,
    load_config,
    loader,
)
from novacron_sdk.config.sections import AgentSettings, DriversSettings, LoggingSettings
from novacron_sdk.errors import ConfigError
from novacron_sdk.migration.models import MigrationSettings
from novacron_sdk.plugin import hookimpl
from novacron_sdk.plugin.manager import NovaCronPluginManager, build_plugin_manager

CORE_SECTIONS = {
    "agent",
    "drivers",
    "transports",
    "codecs",
    "migration",
    "state",
    "logging",
    "cluster",
}


class WidgetSettings(BaseModel):
    """A section contributed by the test plugin."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(default=1, ge=1, description="How many widgets.")
    colour: str = "blue"


class WidgetPlugin:
    """A plugin object contributing the ``widget`` section."""

    @hookimpl
    def novacron_add_config_sections(self, registry: Any) -> None:
        registry.register("widget", WidgetSettings)


@pytest.fixture(scope="module")
def plugins() -> NovaCronPluginManager:
    return build_plugin_manager(autoload=False)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An environment where no config file exists anywhere unless the test writes one."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loader, "SYSTEM_CONFIG_DIR", tmp_path / "etc")
    for name in [n for n in os.environ if n.upper().startswith("NOVACRON_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "home")}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_only(plugins: NovaCronPluginManager, env: dict[str, str]) -> None:
    config = load_config(plugins=plugins, environ=env)
    registry = plugins.config_sections
    assert config.path is None
    assert set(config.sections) == CORE_SECTIONS
    expected = {name: registry.get(name)().model_dump(mode="json") for name in registry.names()}
    assert config.as_dict() == expected
    assert config.sources == {}
    json.dumps(config.as_dict())  # JSON-ready


def test_file_values(plugins: NovaCronPluginManager, env: dict[str, str], tmp_path: Path) -> None:
    path = write(
        tmp_path / "conf.yaml",
        "migration:\n  downtime_limit_ms: 150\n  on_stall: abort\nagent:\n  port: 9000\n",
    )
    config = load_config(path, plugins=plugins, environ=env)
    migration = config.get("migration", MigrationSettings)
    assert config.path == path
    assert migration.downtime_limit_ms == 150
    assert migration.on_stall == "abort"
    assert config.get("agent", AgentSettings).port == 9000
    assert migration.max_rounds == MigrationSettings().max_rounds
    assert config.sources["migration.downtime_limit_ms"] == f"{path}, line 2"
    assert config.sources["agent.port"] == f"{path}, line 5"


def test_empty_file_and_empty_section_mean_defaults(
    plugins: NovaCronPluginManager, env: dict[str, str], tmp_path: Path
) -> None:
    empty = write(tmp_path / "empty.yaml", "# nothing yet\n")
    assert (
        load_config(empty, plugins=plugins, environ=env).get("agent", AgentSettings)
        == AgentSettings()
    )
    blank = write(tmp_path / "blank.yaml", "agent:\n")
    assert (
        load_config(blank, plugins=plugins, environ=env).get("agent", AgentSettings)
        == AgentSettings()
    )


def test_environment_beats_file(
    plugins: NovaCronPluginManager, env: dict[str, str], tmp_path: Path
) -> None:
    path = write(tmp_path / "conf.yaml", "migration:\n  downtime_limit_ms: 150\n  max_rounds: 7\n")
    env |= {"NOVACRON_MIGRATION__DOWNTIME_LIMIT_MS": "250", "NOVACRON_MIGRATION__POSTCOPY": "true"}
    config = load_config(path, plugins=plugins, environ=env)
    migration = config.get("migration", MigrationSettings)
    assert migration.downtime_limit_ms == 250
    assert migration.postcopy is True
    assert migration.max_rounds == 7
    assert config.sources["migration.downtime_limit_ms"] == (
        "environment variable NOVACRON_MIGRATION__DOWNTIME_LIMIT_MS"
    )


def test_overrides_beat_environment(
    plugins: NovaCronPluginManager, env: dict[str, str], tmp_path: Path
) -> None:
    path = write(tmp_path / "conf.yaml", "migration:\n  downtime_limit_ms: 150\n")
    env["NOVACRON_MIGRATION__DOWNTIME_LIMIT_MS"] = "250"
    overrides = {"migration.downtime_limit_ms": "400", "agent.port": 0, "logging.level": "DEBUG"}
    config = load_config(path, plugins=plugins, environ=env, overrides=overrides)
    assert config.get("migration", MigrationSettings).downtime_limit_ms == 400
    assert config.get("agent", AgentSettings).port == 0
    assert config.get("logging", LoggingSettings).level == "DEBUG"
    assert config.sources["migration.downtime_limit_ms"] == "--set migration.downtime_limit_ms"


def test_novacron_config_variable(
    plugins: NovaCronPluginManager, env: dict[str, str], tmp_path: Path
) -> None:
    named = write(tmp_path / "named.yaml", "agent:\n  port: 1111\n")
    explicit = write(tmp_path / "explicit.yaml", "agent:\n  port: 2222\n")
    write(tmp_path / "novacron.yaml", "agent:\n  port: 3333\n")
    env["NOVACRON_CONFIG"] = str(named)
    config = load_config(plugins=plugins, environ=env)
    assert (config.path, config.get("agent", AgentSettings).port) == (named, 1111)
    config = load_config(explicit, plugins=plugins, environ=env)
    assert (config.path, config.get("agent", AgentSettings).port) == (explicit, 2222)


@pytest.mark.parametrize("present", [("cwd", "xdg", "etc"), ("xdg", "etc"), ("etc",)])
def test_default_path_discovery(
    plugins: NovaCronPluginManager, env: dict[str, str], tmp_path: Path, present: tuple[str, ...]
) -> None:
    places = {
        "cwd": tmp_path / "novacron.yaml",
        "xdg": tmp_path / "xdg" / "novacron" / "novacron.yaml",
        "etc": tmp_path / "etc" / "novacron.yaml",
    }
    for port, place in enumerate(present, start=1000):
        write(places[place], f"agent:\n  port: {port}\n")
    config = load_config(plugins=plugins, environ=env)
    assert config.path == places[present[0]]
    assert config.get("agent", AgentSettings).port == 1000


def test_default_config_paths_follow_xdg(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert default_config_paths() == [
        tmp_path / "novacron.yaml",
        tmp_path / "xdg" / "novacron" / "novacron.yaml",
        tmp_path / "etc" / "novacron.yaml",
    ]
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/is/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_config_paths()[1] == tmp_path / "home" / ".config" / "novacron" / "novacron.yaml"


def test_nested_and_case_insensitive_environment_keys(
    plugins: NovaCronPluginManager, env: dict[str, str]
) -> None:
    env |= {
        "NOVACRON_DRIVERS__SETTINGS__SIM__STATE_PATH": "/var/lib/sim",
        "NOVACRON_DRIVERS__SETTINGS__SIM__DISKS": "[1, 2]",
        "NOVACRON_Logging__Level": "ERROR",
        "NOVACRON_DISABLED_PLUGINS": "not-config",
        "NOVACRON_AGENT__NAME": "#1",
        "NOVACRON_STATE__SETTINGS__PATH": "",
    }
    config = load_config(plugins=plugins, environ=env)
    assert config.get("drivers", DriversSettings).settings == {
        "sim": {"state_path": "/var/lib/sim", "disks": [1, 2]}
    }
    assert config.get("logging", LoggingSettings).level == "ERROR"
    assert config.get("agent", AgentSettings).name == "#1"  # not a YAML comment
    assert config.as_dict()["state"]["settings"] == {"path": ""}


def test_unknown_section_names_the_known_ones(
    plugins: NovaCronPluginManager, env: dict[str, str], tmp_path: Path
) -> None:
    path = write(tmp_path / "conf.yaml", "agent:\n  port: 1\nmigrations:\n  x: 1\n")
    env["NOVACRON_NOPE__KEY"] = "1"
    with pytest.raises(ConfigError) as caught:
        load_config(path, plugins=plugins, environ=env)
    message = str(caught.value)
    assert f"{path}, line 3: unknown section 'migrations'" in message
    assert "environment variable NOVACRON_NOPE__KEY: unknown section 'nope'" in message
    for name in CORE_SECTIONS:
        assert name in message


def test_wrong_type_names_file_key_reason_and_allowed(
    plugins: NovaCronPluginManager, env: dict[str, str], tmp_path: Path
) -> None:
    path = write(tmp_path / "conf.yaml", "migration:\n  downtime_limit_ms: fast\n  bogus: 1\n")
    env["NOVACRON_AGENT__PORT"] = "70000"
    with pytest.raises(ConfigError) as caught:
        load_config(path, plugins=plugins, environ=env, overrides={"logging.level": "LOUD"})
    lines = str(caught.value).splitlines()
    description = MigrationSettings.model_fields["downtime_limit_ms"].description
    assert description
    (downtime,) = [line for line in lines if "migration.downtime_limit_ms" in line]
    assert f"{path}, line 2: migration.downtime_limit_ms:" in downtime
    assert "valid number" in downtime
    assert "'fast'" in downtime
    assert "> 0" in downtime
    assert description in downtime
    (bogus,) = [line for line in lines if "migration.bogus" in line]
    assert f"{path}, line 3" in bogus
    assert "downtime_limit_ms" in bogus  # lists the keys that are allowed
    (port,) = [line for line in lines if "agent.port" in line]
    assert "environment variable NOVACRON_AGENT__PORT" in port
    assert "<= 65535" in port
    (level,) = [line for line in lines if "logging.level" in line]
    assert "--set logging.level" in level
    assert "'WARNING'" in level
    assert "(4 problems)" in lines[0]


def test_repeated_key_is_reported(
    plugins: NovaCronPluginManager, env: dict[str, str], tmp_path: Path
) -> None:
    path = write(tmp_path / "conf.yaml", "agent:\n  port: 1\n  port: 2\n")
    with pytest.raises(ConfigError, match=r"line 3: agent\.port is set twice \(first at line 2\)"):
        load_config(path, plugins=plugins, environ=env)


def test_bad_yaml_shows_file_and_line(
    plugins: NovaCronPluginManager, env: dict[str, str], tmp_path: Path
) -> None:
    path = write(tmp_path / "conf.yaml", "agent:\n  port: 1\n  host: [unclosed\n    x: :\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, plugins=plugins, environ=env)
    assert str(path) in str(caught.value)
    assert "invalid YAML at line 4" in str(caught.value)
    assert caught.value.__cause__ is not None


@pytest.mark.parametrize("text", ["- agent\n- migration\n", "just a string\n"])
def test_top_level_must_be_a_mapping(
    plugins: NovaCronPluginManager, env: dict[str, str], tmp_path: Path, text: str
) -> None:
    path = write(tmp_path / "conf.yaml", text)
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path, plugins=plugins, environ=env)


def test_missing_explicit_file(
    plugins: NovaCronPluginManager, env: dict[str, str], tmp_path: Path
) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="does not exist") as caught:
        load_config(missing, plugins=plugins, environ=env)
    assert str(missing) in str(caught.value)
    env["NOVACRON_CONFIG"] = str(missing)
    with pytest.raises(ConfigError, match="NOVACRON_CONFIG"):
        load_config(plugins=plugins, environ=env)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(tmp_path, plugins=plugins, environ=env)


def test_plugin_contributed_section(env: dict[str, str], tmp_path: Path) -> None:
    plugins = build_plugin_manager(autoload=False, plugins=[("test-plugin", WidgetPlugin())])
    path = write(tmp_path / "conf.yaml", "widget:\n  colour: red\n")
    env["NOVACRON_WIDGET__SIZE"] = "3"
    config = load_config(path, plugins=plugins, environ=env)
    assert config.get("widget", WidgetSettings) == WidgetSettings(size=3, colour="red")
    assert set(config.sections) == CORE_SECTIONS | {"widget"}
    with pytest.raises(ConfigError, match=r"widget\.size.*How many widgets"):
        load_config(path, plugins=plugins, environ=env | {"NOVACRON_WIDGET__SIZE": "0"})
    assert "widget" in config_schema(plugins)["properties"]


def test_typed_accessors(plugins: NovaCronPluginManager, env: dict[str, str]) -> None:
    config = load_config(plugins=plugins, environ=env)
    assert isinstance(config.section("agent"), AgentSettings)
    with pytest.raises(ConfigError, match="not a MigrationSettings"):
        config.get("agent", MigrationSettings)
    with pytest.raises(ConfigError, match="known sections: agent"):
        config.section("nope")
    assert repr(NovaCronConfig({})) == "NovaCronConfig(path=None, sections=[])"


def test_schema_has_every_section_and_is_valid(
    plugins: NovaCronPluginManager, env: dict[str, str]
) -> None:
    schema = config_schema(plugins)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["type"] == "object"
    assert set(schema["properties"]) == set(plugins.config_sections.names())
    validator = jsonschema.Draft202012Validator(schema)
    config = load_config(plugins=plugins, environ=env, overrides={"agent.port": 1})
    assert list(validator.iter_errors(config.as_dict())) == []
    assert list(validator.iter_errors({"migration": {"downtime_limit_ms": -1}}))
    assert list(validator.iter_errors({"nope": {}}))
    json.dumps(schema)


def test_docs_list_exactly_the_fields_of_every_core_section(
    plugins: NovaCronPluginManager,
) -> None:
    docs = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text("utf-8")
    registry = plugins.config_sections
    for name in CORE_SECTIONS:
        heading = f"\n### `{name}`\n"
        assert heading in docs, f"docs/configuration.md has no section {name!r}"
        table = docs.split(heading, 1)[1].split("\n#", 1)[0]
        documented = re.findall(r"^\| `([a-z_0-9]+)` \|", table, flags=re.MULTILINE)
        assert documented == list(registry.get(name).model_fields), name


def test_unknown_key_names_the_closest_known_key(
    plugins: NovaCronPluginManager, env: dict[str, str], tmp_path: Path
) -> None:
    """A misspelt key says 'unknown key', the closest key, and every key the section has."""
    path = write(tmp_path / "conf.yaml", "agent:\n  hots: x\n  zzzzz: 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, plugins=plugins, environ=env)
    text = str(caught.value)
    assert "line 2: agent.hots: unknown key (did you mean 'host'?) (got 'x')" in text
    assert "line 3: agent.zzzzz: unknown key (got 1); allowed: the keys name, host" in text
    assert "Extra inputs" not in text


def test_log_level_in_any_letter_case(
    plugins: NovaCronPluginManager, env: dict[str, str], tmp_path: Path
) -> None:
    path = write(tmp_path / "conf.yaml", "logging:\n  level: info\n")
    config = load_config(path, plugins=plugins, environ=env)
    assert config.get("logging", LoggingSettings).level == "INFO"
    bad = write(tmp_path / "bad.yaml", "logging:\n  level: loud\n")
    with pytest.raises(ConfigError, match=r"logging\.level: Input should be 'DEBUG'"):
        load_config(bad, plugins=plugins, environ=env)
