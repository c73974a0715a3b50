"""The typed façade over pluggy: builds the manager, loads plugins, hands out registries.

Nothing happens at import time. :func:`build_plugin_manager` adds the hook specifications,
registers the essential builtins, loads the ``novacron_sdk`` entry-point group (minus
``NOVACRON_DISABLED_PLUGINS``, or none at all with ``NOVACRON_DISABLE_PLUGIN_AUTOLOAD``) and
calls ``check_pending()``. A plugin that fails to import, has an unknown ``novacron_`` hook, or
raises while registering is reported by name with the reason; the rest keep working.
"""

from __future__ import annotations

import fnmatch
import importlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import pluggy

from novacron_sdk.errors import PluginError
from novacron_sdk.plugin import NAME
from novacron_sdk.plugin.registry import Registry

if TYPE_CHECKING:
    from pydantic import BaseModel

    from novacron_sdk.cli.interface import CliCommand
    from novacron_sdk.clouds.interface import CloudDriver
    from novacron_sdk.consensus.interface import StateStore
    from novacron_sdk.encoding.interface import PageCodec
    from novacron_sdk.hypervisors.interface import HypervisorDriver
    from novacron_sdk.init.interface import Component
    from novacron_sdk.migration.models import MigrationEvent
    from novacron_sdk.models import VMEvent
    from novacron_sdk.placement.interface import PlacementPolicy
    from novacron_sdk.prediction.interface import BandwidthPredictor
    from novacron_sdk.security.interface import SecurityProvider
    from novacron_sdk.transport.interface import Transport

log = logging.getLogger(__name__)

T = TypeVar("T")

HOOKSPEC_MODULES = (
    "novacron_sdk.hypervisors.hookspecs",
    "novacron_sdk.clouds.hookspecs",
    "novacron_sdk.transport.hookspecs",
    "novacron_sdk.encoding.hookspecs",
    "novacron_sdk.prediction.hookspecs",
    "novacron_sdk.placement.hookspecs",
    "novacron_sdk.consensus.hookspecs",
    "novacron_sdk.security.hookspecs",
    "novacron_sdk.migration.hookspecs",
    "novacron_sdk.config.hookspecs",
    "novacron_sdk.init.hookspecs",
    "novacron_sdk.cli.hookspecs",
)

BUILTIN_PLUGINS = (
    ("builtin-compute", "novacron_sdk.builtin.compute"),
    ("builtin-dataplane", "novacron_sdk.builtin.dataplane"),
    ("builtin-state", "novacron_sdk.builtin.state"),
    ("builtin-core", "novacron_sdk.builtin.core"),
)

REGISTRY_HOOKS: Mapping[str, str] = {
    "hypervisors": "novacron_register_hypervisors",
    "clouds": "novacron_register_clouds",
    "transports": "novacron_register_transports",
    "codecs": "novacron_register_codecs",
    "predictors": "novacron_register_predictors",
    "placement": "novacron_register_placement_policies",
    "state_stores": "novacron_register_state_stores",
    "security": "novacron_register_security_providers",
    "config_sections": "novacron_add_config_sections",
    "init_components": "novacron_register_init_components",
    "cli_commands": "novacron_add_cli_commands",
}
"""Registry kind -> the registration hook that fills it."""

DISABLED_ENV = "NOVACRON_DISABLED_PLUGINS"
AUTOLOAD_ENV = "NOVACRON_DISABLE_PLUGIN_AUTOLOAD"


@dataclass
class PluginInfo:
    """One plugin as ``novacron plugins list`` shows it."""

    name: str
    distribution: str | None
    version: str | None
    status: Literal["loaded", "failed", "disabled"]
    essential: bool = False
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "status": self.status,
            "essential": self.essential,
            "hooks": self.hooks,
            "registered": self.registered,
            "error": self.error,
        }


class _PluggyManager(pluggy.PluginManager):
    """Pluggy manager that only treats ``novacron_*`` functions as hook implementations."""

    def parse_hookimpl_opts(self, plugin: object, name: str) -> pluggy.HookimplOpts | None:
        if not name.startswith("novacron_"):
            return None
        return super().parse_hookimpl_opts(plugin, name)


class NovaCronPluginManager:
    """Typed access to plugins. Core code calls this, never ``pm.hook`` directly."""

    def __init__(self) -> None:
        self._pm = _PluggyManager(NAME)
        self._infos: dict[str, PluginInfo] = {}
        self._order: dict[str, int] = {}  # plugin name -> registration sequence number
        self._registries: dict[str, Registry[Any]] = {}
        for module in HOOKSPEC_MODULES:
            self._pm.add_hookspecs(importlib.import_module(module))

    # -- loading ---------------------------------------------------------------------------
    def register_plugin(
        self,
        name: str,
        plugin: object,
        *,
        distribution: str | None = None,
        version: str | None = None,
        essential: bool = False,
    ) -> bool:
        """Register one plugin object; on failure record why and return False.

        A name already taken leaves the first plugin alone: the newcomer is recorded as failed
        under a distinct key (``NAME (duplicate from DIST)``) whose error names both.
        """
        if name in self._infos or self._pm.has_plugin(name):
            self._duplicate(name, distribution, version, "a direct registration")
            return False
        info = PluginInfo(name, distribution, version, "loaded", essential=essential)
        self._infos[name] = info
        self._order[name] = len(self._order)
        try:
            self._pm.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            return self._fail(info, f"invalid hook implementation: {exc}")
        unknown = [
            impl.function.__name__
            for impls in (self._pm.get_hookcallers(plugin) or [])
            for impl in impls.get_hookimpls()
            if impl.plugin is plugin and impls.spec is None
        ]
        if unknown:
            self._pm.unregister(plugin)
            return self._fail(
                info, f"unknown hook(s) {', '.join(sorted(set(unknown)))}: check the spelling"
            )
        info.hooks = sorted(
            caller.name
            for caller in (self._pm.get_hookcallers(plugin) or [])
            if caller.spec is not None
        )
        # Registries already built must see a late plugin too.
        for kind, registry in self._registries.items():
            self._fill(kind, registry, only=plugin)
        return info.status == "loaded"

    def _duplicate(
        self, name: str, distribution: str | None, version: str | None, what: str
    ) -> PluginInfo:
        """Record (and warn about) a second plugin named ``name``; the first one stays."""
        first = self._infos.get(name)
        first_from = (
            f"distribution {first.distribution!r}"
            if first is not None and first.distribution
            else "an earlier registration"
        )
        from_ = f"distribution {distribution!r}" if distribution else what
        key = f"{name} (duplicate from {distribution or 'a direct registration'})"
        number = 2
        while key in self._infos:
            key = f"{name} (duplicate #{number} from {distribution or 'a direct registration'})"
            number += 1
        info = PluginInfo(key, distribution, version, "failed")
        self._infos[key] = info
        self._fail(
            info,
            f"plugin name {name!r} from {from_} is already taken by the plugin from "
            f"{first_from}; the first one is kept and this one is ignored. Rename one entry "
            "point or disable one with NOVACRON_DISABLED_PLUGINS",
        )
        return info

    def _fail(self, info: PluginInfo, reason: str) -> bool:
        info.status = "failed"
        info.error = reason
        log.warning("plugin %r failed: %s", info.name, reason)
        return False

    def load_entry_points(self, *, disabled: Sequence[str] = ()) -> None:
        """Load the ``novacron_sdk`` entry-point group, skipping ``disabled`` patterns."""
        for ep in entry_points(group=NAME):
            dist = ep.dist.name if ep.dist is not None else None
            version = ep.dist.version if ep.dist is not None else None
            if ep.name in self._infos or self._pm.has_plugin(ep.name):
                # Two distributions (or a third-party one and a builtin) claim one name:
                # the first keeps it; the other is listed as failed, not silently dropped.
                self._duplicate(ep.name, dist, version, f"entry point {ep.value!r}")
                continue
            if any(
                fnmatch.fnmatchcase(ep.name, pat) or (dist and fnmatch.fnmatchcase(dist, pat))
                for pat in disabled
            ):
                self._infos[ep.name] = PluginInfo(ep.name, dist, version, "disabled")
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                info = PluginInfo(ep.name, dist, version, "failed")
                self._infos[ep.name] = info
                self._fail(info, f"import of {ep.value!r} failed: {type(exc).__name__}: {exc}")
                continue
            self.register_plugin(ep.name, plugin, distribution=dist, version=version)

    def check_pending(self) -> None:
        """Fail if any registered ``novacron_`` implementation has no spec (after loading)."""
        self._pm.check_pending()

    # -- introspection ---------------------------------------------------------------------
    def plugins(self) -> list[PluginInfo]:
        """Every plugin seen, loaded or not, with what it registered in every registry."""
        for kind in REGISTRY_HOOKS:
            self.registry(kind)
        return list(self._infos.values())

    def failures(self) -> list[PluginInfo]:
        """Plugins that failed to load or register."""
        return [i for i in self.plugins() if i.status == "failed"]

    def is_registered(self, name: str) -> bool:
        """Whether a plugin named ``name`` is active."""
        return self._pm.has_plugin(name)

    # -- registries ------------------------------------------------------------------------
    def registry(self, kind: str) -> Registry[Any]:
        """The registry of ``kind`` (see REGISTRY_HOOKS).

        The first use fills every registry at once: a plugin that fails in one registration
        hook is dropped from all of them, whichever registry is read first.
        """
        if kind not in REGISTRY_HOOKS:
            msg = f"unknown registry kind {kind!r}; known: {', '.join(REGISTRY_HOOKS)}"
            raise KeyError(msg)
        if kind not in self._registries:
            for each in REGISTRY_HOOKS:
                if each not in self._registries:
                    registry: Registry[Any] = Registry(each.replace("_", " ").rstrip("s"))
                    self._registries[each] = registry
                    self._fill(each, registry)
        return self._registries[kind]

    def _essential(self, impl: pluggy.HookImpl) -> bool:
        info = self._infos.get(impl.plugin_name)
        return info is not None and info.essential

    def _fill(self, kind: str, registry: Registry[Any], only: object | None = None) -> None:
        caller = getattr(self._pm.hook, REGISTRY_HOOKS[kind])
        # Call each implementation alone so one broken plugin cannot hide the others, and
        # essential builtins first, so that no plugin can take a name the core relies on.
        # (pluggy lists implementations in its own call order, newest first: sort explicitly.)
        impls = sorted(
            caller.get_hookimpls(),
            key=lambda i: (
                not self._essential(i),
                self._order.get(i.plugin_name, len(self._order)),
            ),
        )
        for impl in impls:
            if only is not None and impl.plugin is not only:
                continue
            name = impl.plugin_name
            registry._set_plugin(name)
            try:
                impl.function(**dict.fromkeys(impl.argnames, registry))
            except Exception as exc:
                info = self._infos.setdefault(name, PluginInfo(name, None, None, "loaded"))
                if info.essential:
                    registry._drop_plugin(name)
                    raise
                # A failed plugin provides nothing: drop what it registered in other
                # registries too, so the outcome does not depend on which was read first.
                for each in (registry, *self._registries.values()):
                    each._drop_plugin(name)
                info.registered.clear()
                self._fail(info, f"{REGISTRY_HOOKS[kind]} raised {type(exc).__name__}: {exc}")
                self._pm.unregister(name=name)
                continue
            finally:
                registry._set_plugin("<direct>")
            names = registry.by_plugin(name)
            known = self._infos.get(name)
            if known is not None and names:
                known.registered[kind] = names

    @property
    def hypervisors(self) -> Registry[type[HypervisorDriver]]:
        """Hypervisor driver classes by name."""
        return self.registry("hypervisors")

    @property
    def clouds(self) -> Registry[type[CloudDriver]]:
        """Cloud driver classes by name."""
        return self.registry("clouds")

    @property
    def transports(self) -> Registry[type[Transport]]:
        """Transport classes by name."""
        return self.registry("transports")

    @property
    def codecs(self) -> Registry[type[PageCodec]]:
        """Page codec classes by name."""
        return self.registry("codecs")

    @property
    def predictors(self) -> Registry[type[BandwidthPredictor]]:
        """Bandwidth predictor classes by name."""
        return self.registry("predictors")

    @property
    def placement(self) -> Registry[type[PlacementPolicy]]:
        """Placement policy classes by name."""
        return self.registry("placement")

    @property
    def state_stores(self) -> Registry[type[StateStore]]:
        """State store classes by name."""
        return self.registry("state_stores")

    @property
    def security(self) -> Registry[type[SecurityProvider]]:
        """Security provider classes by name."""
        return self.registry("security")

    @property
    def config_sections(self) -> Registry[type[BaseModel]]:
        """Config section models by section name."""
        return self.registry("config_sections")

    @property
    def init_components(self) -> Registry[type[Component]]:
        """Init component classes by name."""
        return self.registry("init_components")

    @property
    def cli_commands(self) -> Registry[CliCommand]:
        """CLI subcommands by name."""
        return self.registry("cli_commands")

    def compute_drivers(self) -> dict[str, str]:
        """Every compute driver name -> its kind ('hypervisor' or 'cloud')."""
        out = dict.fromkeys(self.hypervisors.names(), "hypervisor")
        out.update(dict.fromkeys(self.clouds.names(), "cloud"))
        return out

    # -- decision hooks (firstresult) --------------------------------------------------------
    def call_decision(self, hook: str, **kwargs: Any) -> Any:
        """Call a firstresult hook by name; returns None when no plugin decided.

        Implementations are called one by one in pluggy's order (the latest registered
        first, ``tryfirst``/``trylast`` honoured) until one returns a value other than None.
        One that raises is reported as ``PluginError("plugin 'NAME' failed in HOOK: ...")``,
        chained to the original exception.
        """
        caller = getattr(self._pm.hook, hook)
        if caller.spec is None or not caller.spec.opts.get("firstresult"):
            msg = f"{hook} is not a decision (firstresult) hook"
            raise ValueError(msg)
        impls = caller.get_hookimpls()
        if any(impl.hookwrapper or impl.wrapper for impl in impls):
            return caller(**kwargs)  # wrappers need pluggy's own call loop
        for impl in reversed(impls):  # pluggy calls the last of its list first
            missing = [arg for arg in impl.argnames if arg not in kwargs]
            if missing:
                msg = f"{hook} called without argument(s) {', '.join(missing)}"
                raise TypeError(msg)
            try:
                result = impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
            except Exception as exc:
                msg = f"plugin {impl.plugin_name!r} failed in {hook}: {type(exc).__name__}: {exc}"
                raise PluginError(msg) from exc
            if result is not None:
                return result
        return None

    # -- events (broadcast) ------------------------------------------------------------------
    def emit_migration_event(self, event: MigrationEvent) -> None:
        """Broadcast a migration event; a failing listener is logged and skipped."""
        self._broadcast("novacron_migration_event", event=event)

    def emit_vm_event(self, event: VMEvent) -> None:
        """Broadcast a VM lifecycle event."""
        self._broadcast("novacron_vm_event", event=event)

    def _broadcast(self, hook: str, **kwargs: Any) -> None:
        for impl in getattr(self._pm.hook, hook).get_hookimpls():
            try:
                impl.function(**{k: kwargs[k] for k in impl.argnames})
            except Exception:
                log.exception("plugin %r failed in %s", impl.plugin_name, hook)


def _env_list(value: str | None) -> list[str]:
    return [p.strip() for p in (value or "").split(",") if p.strip()]


def build_plugin_manager(
    *,
    autoload: bool | None = None,
    disabled: Iterable[str] | None = None,
    plugins: Iterable[tuple[str, object]] = (),
    environ: Mapping[str, str] | None = None,
) -> NovaCronPluginManager:
    """Build a plugin manager: specs, builtins, entry points, extra ``plugins``, check.

    ``autoload`` defaults to not ``NOVACRON_DISABLE_PLUGIN_AUTOLOAD``; ``disabled`` defaults to
    the comma list in ``NOVACRON_DISABLED_PLUGINS`` (shell-style patterns, ``*`` for all).
    Builtins are essential and cannot be disabled.
    """
    env = os.environ if environ is None else environ
    if autoload is None:
        autoload = env.get(AUTOLOAD_ENV, "").strip().lower() in ("", "0", "false", "no")
    disabled_list = list(disabled) if disabled is not None else _env_list(env.get(DISABLED_ENV))
    manager = NovaCronPluginManager()
    for name, module in BUILTIN_PLUGINS:
        mod: ModuleType = importlib.import_module(module)
        manager.register_plugin(name, mod, distribution="novacron-sdk", essential=True)
        manager._infos[name].version = _core_version()
    if autoload:
        manager.load_entry_points(disabled=disabled_list)
    for name, plugin in plugins:
        manager.register_plugin(name, plugin)
    manager.check_pending()
    return manager


def _core_version() -> str:
    from novacron_sdk.__about__ import __version__

    return __version__
