"""Checks of what a configuration names: drivers, transports, codecs, predictors and their settings.

``load_config`` validates every section against its model, but a name such as
``migration.codec: zstdd`` or a key inside ``codecs.settings.dwcp`` is only a string or a dict to
the model: it is checked against the installed plugins here. ``novacron config validate`` runs
these checks, and the agent runs them when it starts, so a typo is reported up front, with
where the value came from, instead of at the first migration.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from novacron_sdk.config.sections import (
    AgentSettings,
    CodecsSettings,
    DriversSettings,
    StateSettings,
    TransportsSettings,
)
from novacron_sdk.errors import ConfigError, NovaCronError

M = TypeVar("M", bound=BaseModel)

if TYPE_CHECKING:
    from novacron_sdk.config.loader import NovaCronConfig
    from novacron_sdk.consensus.interface import StateStore
    from novacron_sdk.encoding.interface import PageCodec
    from novacron_sdk.plugin.manager import NovaCronPluginManager
    from novacron_sdk.plugin.registry import Registry
    from novacron_sdk.transport.interface import Transport


def plugin_problems(
    config: NovaCronConfig, plugins: NovaCronPluginManager, *, drivers: bool = True
) -> list[str]:
    """Every problem with the names and plugin settings ``config`` refers to, one line each.

    Unknown driver, transport, codec and predictor names (with the close matches and every
    known name), and transport or codec settings the plugin itself rejects: each transport
    named in ``transports.settings`` is built with its settings, and each codec named in
    ``codecs.settings`` makes an encoder (which reads its reference files). With ``drivers``
    False, ``drivers.default`` and ``drivers.settings`` are not checked (an agent uses only
    ``agent.driver``; a shared file may configure drivers this host does not install).
    """
    check = _Checker(config)
    known_drivers = sorted(plugins.compute_drivers())
    if drivers:
        section = config.get("drivers", DriversSettings)
        check.name("drivers.default", section.default, "compute driver", known_drivers)
        for name in section.settings:
            check.name(f"drivers.settings.{name}", name, "compute driver", known_drivers)
    if "agent" in config.sections:
        driver = config.get("agent", AgentSettings).driver
        check.name("agent.driver", driver, "compute driver", known_drivers)
    if "migration" in config.sections:
        migration = config.section("migration")
        for field, registry in (
            ("transport", plugins.transports),
            ("codec", plugins.codecs),
            ("predictor", plugins.predictors),
        ):
            chosen = getattr(migration, field, None)
            if isinstance(chosen, str):
                check.name(f"migration.{field}", chosen, field, registry.names())
    transports = config.get("transports", TransportsSettings).settings
    for name, settings in transports.items():
        key = f"transports.settings.{name}"
        if check.name(key, name, "transport", plugins.transports.names()):
            # get() imports a lazy reference: inside builds(), so a missing SDK is one problem.
            check.builds(key, partial(_transport, plugins.transports, name, settings))
    if "state" in config.sections:
        state = config.get("state", StateSettings)
        if check.name("state.store", state.store, "state store", plugins.state_stores.names()):
            store = partial(_store_settings, plugins.state_stores, state.store, state.settings)
            check.builds("state.settings", store)
    codecs = config.get("codecs", CodecsSettings).settings
    for name, settings in codecs.items():
        key = f"codecs.settings.{name}"
        if check.name(key, name, "codec", plugins.codecs.names()):
            # A codec reads most settings when it makes an encoder: make one to check them.
            check.builds(key, partial(_encoder, plugins.codecs, name, settings))
    return check.problems


def _transport(
    registry: Registry[type[Transport]], name: str, settings: Mapping[str, Any]
) -> object:
    return registry.get(name)(settings)


def _store_settings(
    registry: Registry[type[StateStore]], name: str, settings: Mapping[str, Any]
) -> None:
    registry.get(name).check_settings(settings)


def _encoder(registry: Registry[type[PageCodec]], name: str, settings: Mapping[str, Any]) -> object:
    return registry.get(name)(settings).new_encoder()


def check_plugin_settings(
    config: NovaCronConfig, plugins: NovaCronPluginManager, *, drivers: bool = True
) -> None:
    """Raise ConfigError listing every problem ``plugin_problems`` finds (none: return)."""
    problems = plugin_problems(config, plugins, drivers=drivers)
    if problems:
        count = len(problems)
        listing = "\n".join(f"  - {problem}" for problem in problems)
        msg = (
            f"invalid configuration ({count} problem{'s' if count > 1 else ''}):\n{listing}\n"
            "Fix the values above; `novacron plugins list` shows what is installed."
        )
        raise ConfigError(msg)


def describe_error(exc: BaseException) -> str:
    """One line for an error a plugin raised on its settings (pydantic errors without URLs)."""
    if isinstance(exc, ValidationError):
        return validation_problems(exc)
    return str(exc) or type(exc).__name__


def parse_settings(model: type[M], settings: Mapping[str, Any], *, prefix: str, what: str) -> M:
    """``settings`` validated as ``model``; ConfigError ``invalid WHAT settings: key: problem``.

    For plugin settings models (a driver's ``drivers.settings.NAME``): ``prefix`` goes before
    every key of the message, ``what`` names the settings (``libvirt driver``).
    """
    try:
        return model.model_validate(dict(settings))
    except ValidationError as exc:
        msg = f"invalid {what} settings: {validation_problems(exc, model, prefix)}"
        raise ConfigError(msg) from exc


def did_you_mean(key: str, known: Iterable[str]) -> str:
    """`` (did you mean 'closest'?)`` for the known name closest to ``key``, or ``""``."""
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_key_problem(
    settings: Mapping[str, Any], known: Iterable[str], prefix: str
) -> str | None:
    """``<prefix><key>: unknown key (did you mean ...?); known: ...`` for the first key of
    ``settings`` not in ``known`` (for settings read without a pydantic model), or None."""
    names = list(known)
    for key in settings:
        if key not in names:
            return (
                f"{prefix}{key}: unknown key{did_you_mean(str(key), names)}; "
                f"known: {', '.join(names)}"
            )
    return None


def validation_problems(
    exc: ValidationError, model: type[BaseModel] | None = None, prefix: str = ""
) -> str:
    """A settings model's validation errors as ``key: problem`` items joined by "; ".

    No pydantic URLs or input dumps; an unknown key says so and, when ``model`` is given,
    names the closest known key (``resume_window: unknown key (did you mean
    'resume_window_s'?)``). ``prefix`` goes before every key (e.g. ``drivers.settings.aws.``).
    """
    known = sorted(model.model_fields) if model is not None else []
    items = []
    for error in exc.errors(include_url=False):
        key = prefix + (".".join(str(part) for part in error["loc"]) or "settings")
        if error["type"] == "extra_forbidden":
            last = str(error["loc"][-1]) if error["loc"] else ""
            items.append(f"{key}: unknown key{did_you_mean(last, known)}")
            continue
        text = f"{key}: {error['msg']}"
        if error["type"] != "missing":
            shown = repr(error["input"])
            text += f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
        items.append(text)
    return "; ".join(items)


class _Checker:
    def __init__(self, config: NovaCronConfig) -> None:
        self.sources = config.sources
        self.problems: list[str] = []

    def where(self, key: str) -> str:
        """Where the value at ``key`` (or the first value below it) came from."""
        if key in self.sources:
            return self.sources[key]
        below = (label for name, label in self.sources.items() if name.startswith(key + "."))
        return next(below, "default value")

    def name(self, key: str, value: str, kind: str, known: Iterable[str]) -> bool:
        """True if ``value`` is a known ``kind`` name; otherwise record a problem."""
        names = sorted(known)
        if value in names:
            return True
        close = difflib.get_close_matches(value, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        listing = ", ".join(names) or "none"
        self.problems.append(
            f"{self.where(key)}: {key}: no {kind} named {value!r}{hint}; installed: {listing}. "
            "Is the plugin that provides it installed?"
        )
        return False

    def builds(self, key: str, build: Callable[[], object]) -> None:
        """Record a problem if building the plugin object with its settings fails."""
        try:
            build()
        except (NovaCronError, ValueError, TypeError, OSError) as exc:
            self.problems.append(f"{self.where(key)}: {key}: {describe_error(exc)}")
        except Exception as exc:  # a plugin's own error type: say it, keep going
            self.problems.append(
                f"{self.where(key)}: {key}: {type(exc).__name__}: {describe_error(exc)}"
            )
