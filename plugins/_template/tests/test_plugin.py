"""Tests of the PLUGINNAME plugin: its registration, and the SDK's compute driver contract."""

from __future__ import annotations

import pytest

from novacron_PLUGINNAME import hooks
from novacron_PLUGINNAME.driver import PluginDriver
from novacron_sdk.errors import ConfigError
from novacron_sdk.plugin.manager import build_plugin_manager
from novacron_sdk.testing.compute import ComputeDriverContract


def test_registers_the_driver_lazily():
    # Registered explicitly, so the test also runs before the package is pip-installed;
    # once installed, the novacron_plugins fixture finds it through its entry point.
    plugins = build_plugin_manager(autoload=False, plugins=[("PLUGINNAME", hooks)])
    entry = plugins.hypervisors.entry("PLUGINNAME")
    assert entry.target == "novacron_PLUGINNAME.driver:PluginDriver"
    assert plugins.hypervisors.get("PLUGINNAME") is PluginDriver
    assert plugins.failures() == []


def test_a_mistyped_setting_names_the_key_it_resembles():
    with pytest.raises(
        ConfigError, match=r"capacity_vm: unknown key \(did you mean 'capacity_vms'\?\)"
    ):
        PluginDriver({"capacity_vm": 10})


class TestPluginDriverContract(ComputeDriverContract):
    """Every compute driver must pass the SDK's contract suite."""

    @pytest.fixture
    def driver(self) -> PluginDriver:
        return PluginDriver({"capacity_vms": 10})
