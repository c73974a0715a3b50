"""Typed registries handed to ``novacron_register_*`` hooks.

A registry maps a unique name to a factory (usually a class). Plugins may register a lazy
reference ``"package.module:Attribute"`` so that heavy third-party SDKs are imported only when
the entry is first used, never when plugins are merely listed.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar, cast

from novacron_sdk.errors import DuplicateNameError, PluginError, UnknownNameError

T = TypeVar("T")


@dataclass
class RegistryEntry(Generic[T]):
    """One registered name: who registered it, what it is, and how much it wants to be default."""

    name: str
    target: T | str
    plugin: str
    priority: int = 0
    description: str = ""
    _resolved: T | None = field(default=None, repr=False)

    def resolve(self) -> T:
        """Return the registered object, importing a lazy ``module:attr`` reference once."""
        if self._resolved is not None:
            return self._resolved
        if not isinstance(self.target, str):
            self._resolved = self.target
            return self.target
        module_name, _, attr = self.target.partition(":")
        if not module_name or not attr:
            msg = (
                f"plugin {self.plugin!r} registered {self.name!r} as {self.target!r}; "
                "a lazy reference must look like 'package.module:Attribute'"
            )
            raise PluginError(msg)
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            msg = (
                f"{self.name!r} (from plugin {self.plugin!r}) could not be loaded from "
                f"{self.target!r}: {exc}. Is the plugin's third-party SDK installed?"
            )
            raise PluginError(msg) from exc
        self._resolved = cast("T", obj)
        return self._resolved


class Registry(Generic[T]):
    """Names to factories for one kind of component (hypervisor drivers, codecs, ...).

    Registering a name twice raises :class:`DuplicateNameError` naming both plugins.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, RegistryEntry[T]] = {}
        self._current_plugin = "<direct>"

    def register(
        self, name: str, target: T | str, *, priority: int = 0, description: str = ""
    ) -> None:
        """Register ``target`` (an object or a lazy ``"module:attr"``) under ``name``.

        ``priority`` decides the default when configuration names none: the highest wins,
        builtins use 0.
        """
        if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            msg = f"{self.kind} name {name!r} is invalid: use letters, digits, '-', '_' or '.'"
            raise PluginError(msg)
        if name in self._entries:
            first = self._entries[name].plugin
            msg = (
                f"{self.kind} {name!r} is registered twice: first by plugin {first!r}, "
                f"again by plugin {self._current_plugin!r}; rename one or disable a plugin "
                "with NOVACRON_DISABLED_PLUGINS"
            )
            raise DuplicateNameError(msg)
        self._entries[name] = RegistryEntry(
            name=name,
            target=target,
            plugin=self._current_plugin,
            priority=priority,
            description=description,
        )

    def _set_plugin(self, plugin: str) -> None:
        self._current_plugin = plugin

    def _drop_plugin(self, plugin: str) -> None:
        for name in [n for n, e in self._entries.items() if e.plugin == plugin]:
            del self._entries[name]

    def get(self, name: str) -> T:
        """Return the object registered as ``name``, or raise naming the known ones."""
        return self.entry(name).resolve()

    def entry(self, name: str) -> RegistryEntry[T]:
        """Return the entry for ``name`` with its provenance."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            msg = f"no {self.kind} named {name!r}; known: {known}"
            raise UnknownNameError(msg) from None

    def default_name(self) -> str:
        """The name with the highest priority (ties: first registered)."""
        if not self._entries:
            msg = f"no {self.kind} is registered; install a plugin that provides one"
            raise UnknownNameError(msg)
        return max(self._entries.values(), key=lambda e: e.priority).name

    def names(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._entries)

    def entries(self) -> list[RegistryEntry[T]]:
        """All entries in registration order."""
        return list(self._entries.values())

    def by_plugin(self, plugin: str) -> list[str]:
        """Names registered by ``plugin``."""
        return [e.name for e in self._entries.values() if e.plugin == plugin]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
