"""Unit tests of the typed registries and the plugin manager façade (no entry points)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from novacron_sdk.errors import DuplicateNameError, PluginError, UnknownNameError
from novacron_sdk.migration.models import MigrationEvent, MigrationPhase, MigrationSettings
from novacron_sdk.models import Host, VMEvent, VMState
from novacron_sdk.placement.interface import HostUsage, PlacementRequest
from novacron_sdk.plugin import hookimpl
from novacron_sdk.plugin.manager import REGISTRY_HOOKS, build_plugin_manager
from novacron_sdk.plugin.registry import Registry
from novacron_sdk.prediction.interface import BandwidthEstimate
from novacron_sdk.transport.interface import Endpoint


def manager(*plugins: tuple[str, object]):
    return build_plugin_manager(autoload=False, plugins=plugins)


# -- Registry ------------------------------------------------------------------------------
def test_duplicate_name_names_both_plugins():
    registry: Registry[object] = Registry("hypervisor")
    registry._set_plugin("first")
    registry.register("x", object)
    registry._set_plugin("second")
    with pytest.raises(
        DuplicateNameError, match="first by plugin 'first', again by plugin 'second'"
    ):
        registry.register("x", object)
    assert registry.entry("x").plugin == "first"


@pytest.mark.parametrize("name", ["", "has space", "semi;colon", "slash/name"])
def test_invalid_names_are_rejected(name):
    with pytest.raises(PluginError, match="invalid"):
        Registry("codec").register(name, object)


def test_lazy_reference_resolves_once():
    registry: Registry[type] = Registry("thing")
    registry.register("ordered", "collections:OrderedDict")
    entry = registry.entry("ordered")
    assert isinstance(entry.target, str)
    import collections

    assert registry.get("ordered") is collections.OrderedDict
    assert entry.resolve() is registry.get("ordered")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_colon_here", "must look like 'package.module:Attribute'"),
        ("novacron_sdk_missing_module:Thing", "could not be loaded"),
        ("collections:NoSuchAttribute", "could not be loaded"),
    ],
)
def test_bad_lazy_references_raise_plugin_error(target, message):
    registry: Registry[object] = Registry("thing")
    registry.register("bad", target)
    with pytest.raises(PluginError, match=message):
        registry.get("bad")


def test_unknown_name_lists_known_ones():
    registry: Registry[object] = Registry("codec")
    registry.register("zlib", object)
    with pytest.raises(UnknownNameError, match="known: zlib"):
        registry.get("lz4")
    with pytest.raises(UnknownNameError, match="no codec is registered"):
        Registry("codec").default_name()


def test_priority_decides_default_and_ties_keep_first():
    registry: Registry[object] = Registry("predictor")
    registry.register("a", object)
    registry.register("b", object)
    assert registry.default_name() == "a"
    registry.register("c", object, priority=5)
    registry.register("d", object, priority=-3)
    assert registry.default_name() == "c"
    assert registry.names() == ["a", "b", "c", "d"]
    assert len(registry) == 4
    assert "d" in registry


# -- manager: registration -----------------------------------------------------------------
class EveryRegistration:
    """Implements every registration hook, each registering one object."""

    @hookimpl
    def novacron_register_hypervisors(self, registry):
        registry.register("t-hv", "collections:OrderedDict")

    @hookimpl
    def novacron_register_clouds(self, registry):
        registry.register("t-cloud", object)

    @hookimpl
    def novacron_register_transports(self, registry):
        registry.register("t-transport", object)

    @hookimpl
    def novacron_register_codecs(self, registry):
        registry.register("t-codec", object, priority=100)

    @hookimpl
    def novacron_register_predictors(self, registry):
        registry.register("t-predictor", object)

    @hookimpl
    def novacron_register_placement_policies(self, registry):
        registry.register("t-placement", object)

    @hookimpl
    def novacron_register_state_stores(self, registry):
        registry.register("t-store", object)

    @hookimpl
    def novacron_register_security_providers(self, registry):
        registry.register("t-security", object)

    @hookimpl
    def novacron_add_config_sections(self, registry):
        registry.register("t-section", object)

    @hookimpl
    def novacron_register_init_components(self, registry):
        registry.register("t-component", object)

    @hookimpl
    def novacron_add_cli_commands(self, registry):
        registry.register("t-command", object)


def test_every_registration_hook_fills_its_registry():
    pm = manager(("everything", EveryRegistration()))
    info = next(i for i in pm.plugins() if i.name == "everything")
    assert info.status == "loaded"
    assert set(info.hooks) == set(REGISTRY_HOOKS.values())
    expected = {
        "hypervisors": "t-hv",
        "clouds": "t-cloud",
        "transports": "t-transport",
        "codecs": "t-codec",
        "predictors": "t-predictor",
        "placement": "t-placement",
        "state_stores": "t-store",
        "security": "t-security",
        "config_sections": "t-section",
        "init_components": "t-component",
        "cli_commands": "t-command",
    }
    assert info.registered == {kind: [name] for kind, name in expected.items()}
    for kind, name in expected.items():
        assert pm.registry(kind).entry(name).plugin == "everything"
    assert pm.codecs.default_name() == "t-codec"
    assert pm.compute_drivers()["t-cloud"] == "cloud"
    assert pm.compute_drivers()["sim"] == "hypervisor"


def test_registration_never_resolves_lazy_references():
    class Lazy:
        @hookimpl
        def novacron_register_hypervisors(self, registry):
            registry.register("lazy", "novacron_sdk_not_installed_anywhere:Driver")

    pm = manager(("lazy", Lazy()))
    assert "lazy" in pm.hypervisors
    with pytest.raises(PluginError, match="Is the plugin's third-party SDK installed"):
        pm.hypervisors.get("lazy")


def test_plugin_raising_in_registration_is_reported_and_others_work():
    class Raises:
        @hookimpl
        def novacron_register_codecs(self, registry):
            registry.register("half", object)
            raise RuntimeError("boom")

    class Fine:
        @hookimpl
        def novacron_register_codecs(self, registry):
            registry.register("fine", object)

    pm = manager(("raises", Raises()), ("fine", Fine()))
    assert "fine" in pm.codecs
    assert "half" not in pm.codecs, "a failed plugin's partial registrations are dropped"
    failure = {i.name: i for i in pm.failures()}["raises"]
    assert "novacron_register_codecs raised RuntimeError: boom" in failure.error
    assert not pm.is_registered("raises")
    assert pm.is_registered("fine")


def test_unknown_novacron_hook_is_reported():
    class Typo:
        @hookimpl
        def novacron_register_codec(self, registry):  # singular: not a hook
            registry.register("never", object)

    pm = manager(("typo", Typo()))
    (failure,) = pm.failures()
    assert failure.name == "typo"
    assert "novacron_register_codec" in failure.error
    assert "never" not in pm.codecs


def test_functions_without_prefix_are_ignored():
    class Helper:
        def register_everything(self, registry):  # not a novacron_ hook: ignored
            raise AssertionError("must not be called")

    pm = manager(("helper", Helper()))
    assert pm.failures() == []
    assert {i.name: i for i in pm.plugins()}["helper"].hooks == []


def test_late_registration_reaches_built_registries():
    pm = manager()
    assert "late-hv" not in pm.hypervisors

    class Late:
        @hookimpl
        def novacron_register_hypervisors(self, registry):
            registry.register("late-hv", object)

    assert pm.register_plugin("late", Late())
    assert pm.hypervisors.entry("late-hv").plugin == "late"
    assert {i.name: i for i in pm.plugins()}["late"].registered == {"hypervisors": ["late-hv"]}


def test_duplicate_in_late_plugin_fails_only_that_plugin():
    pm = manager()
    assert "sim" in pm.hypervisors

    class Squatter:
        @hookimpl
        def novacron_register_hypervisors(self, registry):
            registry.register("sim", object)

    pm.register_plugin("squatter", Squatter())
    assert pm.hypervisors.entry("sim").plugin == "builtin-compute"
    (failure,) = pm.failures()
    assert failure.name == "squatter"
    assert "registered twice" in failure.error


def test_unknown_registry_kind():
    with pytest.raises(KeyError, match="unknown registry kind"):
        manager().registry("engines")


# -- decision hooks ------------------------------------------------------------------------
SETTINGS = MigrationSettings()
ESTIMATE = BandwidthEstimate(
    horizon_s=1.0, mean_bps=1e9, lower_bps=5e8, coverage=0.9, predictor="t", samples=3
)


class Undecided:
    """Returns None from every decision hook: must not stop a later plugin."""

    @hookimpl
    def novacron_choose_transport(self, destination, settings):
        return None

    @hookimpl
    def novacron_choose_codec(self, estimate, settings):
        return None


class Decider:
    """Decides every decision hook."""

    @hookimpl
    def novacron_choose_transport(self, destination, settings):
        return "quic" if destination.port == 443 else "tcp"

    @hookimpl
    def novacron_choose_stream_count(self, estimate, rtt_s, settings):
        return 8 if rtt_s and rtt_s > 0.05 else 1

    @hookimpl
    def novacron_choose_codec(self, estimate, settings):
        return "fast" if estimate and estimate.mean_bps > 1e8 else "dense"

    @hookimpl
    def novacron_choose_predictor(self, settings):
        return "harmonic"

    @hookimpl
    def novacron_filter_host(self, request, host):
        if host.free_memory_mib < request.memory_mib:
            return f"{host.host.id}: not enough memory"
        return None

    @hookimpl
    def novacron_should_switch_over(self, remaining_bytes, estimate, settings):
        return remaining_bytes == 0 or None


class SecondOpinion:
    """Registered last, so called first: it must win where it decides."""

    @hookimpl
    def novacron_choose_predictor(self, settings):
        return "ewma"


def _host(memory_mib):
    return HostUsage(host=Host(id="h1", name="h1", driver="sim", vcpus=4, memory_mib=memory_mib))


def test_decision_hooks_stop_at_first_non_none():
    pm = manager(("decider", Decider()), ("undecided", Undecided()))
    assert (
        pm.call_decision(
            "novacron_choose_transport", destination=Endpoint(port=443), settings=SETTINGS
        )
        == "quic"
    )
    assert (
        pm.call_decision(
            "novacron_choose_stream_count", estimate=ESTIMATE, rtt_s=0.1, settings=SETTINGS
        )
        == 8
    )
    assert pm.call_decision("novacron_choose_codec", estimate=ESTIMATE, settings=SETTINGS) == "fast"
    assert pm.call_decision("novacron_choose_codec", estimate=None, settings=SETTINGS) == "dense"
    assert pm.call_decision("novacron_choose_predictor", settings=SETTINGS) == "harmonic"
    request = PlacementRequest(name="vm", memory_mib=2048)
    assert pm.call_decision("novacron_filter_host", request=request, host=_host(1024)) == (
        "h1: not enough memory"
    )
    assert pm.call_decision("novacron_filter_host", request=request, host=_host(4096)) is None
    assert (
        pm.call_decision(
            "novacron_should_switch_over",
            remaining_bytes=0,
            estimate=None,
            settings=SETTINGS,
            rtt_s=None,
        )
        is True
    )
    assert (
        pm.call_decision(
            "novacron_should_switch_over",
            remaining_bytes=10,
            estimate=ESTIMATE,
            settings=SETTINGS,
            rtt_s=0.05,
        )
        is None
    )


def test_later_plugin_decides_first():
    pm = manager(("decider", Decider()), ("second", SecondOpinion()))
    assert pm.call_decision("novacron_choose_predictor", settings=SETTINGS) == "ewma"


def test_no_decision_gives_none():
    assert manager().call_decision("novacron_choose_predictor", settings=SETTINGS) is None


def test_call_decision_refuses_broadcast_hooks():
    with pytest.raises(ValueError, match="not a decision"):
        manager().call_decision("novacron_migration_event", event=None)


# -- broadcast events ----------------------------------------------------------------------
class Listener:
    def __init__(self):
        self.migration_events = []
        self.vm_events = []

    @hookimpl
    def novacron_migration_event(self, event):
        self.migration_events.append(event)

    @hookimpl
    def novacron_vm_event(self, event):
        self.vm_events.append(event)


class FailingListener:
    @hookimpl
    def novacron_migration_event(self, event):
        raise RuntimeError("listener broke")

    @hookimpl
    def novacron_vm_event(self, event):
        raise RuntimeError("listener broke")


def test_broadcast_reaches_everyone_despite_a_failing_listener(caplog):
    from datetime import UTC, datetime

    before, after = Listener(), Listener()
    pm = manager(("before", before), ("failing", FailingListener()), ("after", after))
    event = MigrationEvent(
        migration_id="m1", vm="vm1", kind="progress", phase=MigrationPhase.PRECOPY, pages_sent=3
    )
    vm_event = VMEvent(
        vm_id="vm1", driver="sim", state=VMState.RUNNING, timestamp=datetime.now(UTC)
    )
    with caplog.at_level(logging.ERROR, logger="novacron_sdk.plugin.manager"):
        pm.emit_migration_event(event)
        pm.emit_vm_event(vm_event)
    assert before.migration_events == [event]
    assert after.migration_events == [event]
    assert before.vm_events == [vm_event]
    assert after.vm_events == [vm_event]
    failures = [r for r in caplog.records if "failing" in r.getMessage()]
    assert len(failures) == 2
    assert {"novacron_migration_event", "novacron_vm_event"} <= {
        r.getMessage().rsplit(" ", 1)[-1] for r in failures
    }


def test_check_pending_passes_with_builtins_only():
    pm = manager()
    pm.check_pending()
    assert all(i.status == "loaded" and i.essential for i in pm.plugins())


def test_plugin_module_object_registers_like_a_class():
    module = SimpleNamespace(
        novacron_register_predictors=hookimpl(lambda registry: registry.register("ns", object))
    )
    pm = manager(("namespace", module))
    assert pm.predictors.entry("ns").plugin == "namespace"
