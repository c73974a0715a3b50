"""Load ``novacron.yaml``: defaults < file < environment < overrides, validated section by section.

Sections are pydantic models contributed through ``novacron_add_config_sections``. Every value
remembers where it came from, so an invalid one is reported with its file and line, its
environment variable or its ``--set`` flag.
"""

from __future__ import annotations

import base64
import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from novacron_sdk.errors import ConfigError

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo
    from pydantic_core import ErrorDetails

    from novacron_sdk.plugin.manager import NovaCronPluginManager

M = TypeVar("M", bound=BaseModel)
Key = tuple[str, ...]

CONFIG_ENV = "NOVACRON_CONFIG"
"""Environment variable naming the config file (used when no path is passed)."""
ENV_PREFIX = "NOVACRON_"
FILE_NAME = "novacron.yaml"
SYSTEM_CONFIG_DIR = Path("/etc/novacron")
"""Last place searched; a module constant so that tests and packagers can point it elsewhere."""

SECRET_KEY_PATTERN = re.compile(
    r"secret|password|token|credential|private_key|client_secret", re.IGNORECASE
)
"""Keys whose values ``novacron config show`` masks (matched anywhere in the key name)."""
SECRET_MASK = "***"  # noqa: S105 - the mask, not a password

_NULL_SPELLINGS = frozenset({"~", "null", "Null", "NULL"})
_CONSTRAINTS = (
    ("gt", ">"),
    ("ge", ">="),
    ("lt", "<"),
    ("le", "<="),
    ("multiple_of", "multiple of"),
    ("min_length", "min length"),
    ("max_length", "max length"),
    ("pattern", "matching"),
)


class NovaCronConfig:
    """The validated configuration: one pydantic model per section, and where values came from.

    ``sources`` maps a dotted key (``migration.downtime_limit_ms``) to where it was set:
    ``"<file>, line N"``, ``"environment variable NOVACRON_..."`` or ``"--set ..."``; keys left
    at their defaults are absent.
    """

    def __init__(
        self,
        sections: Mapping[str, BaseModel],
        path: Path | None = None,
        sources: Mapping[str, str] | None = None,
    ) -> None:
        self.path = path
        self.sections: dict[str, BaseModel] = dict(sections)
        self.sources: dict[str, str] = dict(sources or {})

    def section(self, name: str) -> BaseModel:
        """The validated model of section ``name``."""
        try:
            return self.sections[name]
        except KeyError:
            known = ", ".join(self.sections) or "none"
            msg = (
                f"no config section {name!r}; known sections: {known}. "
                "Is the plugin that provides it installed and enabled?"
            )
            raise ConfigError(msg) from None

    def get(self, name: str, model: type[M]) -> M:
        """Section ``name`` typed as ``model``; raises ConfigError if it is another model."""
        value = self.section(name)
        if not isinstance(value, model):
            msg = (
                f"config section {name!r} is a {type(value).__name__}, not a {model.__name__}; "
                "two plugins may disagree about what this section holds"
            )
            raise ConfigError(msg)
        return value

    def as_dict(self, *, redact: bool = False) -> dict[str, Any]:
        """Every section as JSON-ready data.

        Binary values (a YAML ``!!binary`` scalar) become their standard base64 text. With
        ``redact`` (what ``novacron config show`` prints) every value whose key matches
        :data:`SECRET_KEY_PATTERN` (secret, password, token, ...) is replaced by ``"***"``.
        """
        data = {name: _jsonable(model) for name, model in self.sections.items()}
        return redact_secrets(data) if redact else data

    def __repr__(self) -> str:
        return f"NovaCronConfig(path={self.path!r}, sections={list(self.sections)!r})"


def _jsonable(model: BaseModel) -> Any:
    """``model`` dumped in JSON mode; bytes (which pydantic would decode as UTF-8) as base64."""
    try:
        return model.model_dump(mode="json")
    except ValueError:  # UnicodeDecodeError or PydanticSerializationError on binary data
        from pydantic_core import to_jsonable_python

        return to_jsonable_python(_base64_bytes(model.model_dump(mode="python")))


def _base64_bytes(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Mapping):
        return {key: _base64_bytes(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_base64_bytes(item) for item in value]
    return value


def _unshared(value: Any) -> Any:
    """A copy of a loaded tree in which no mapping or list is shared.

    (``copy.deepcopy`` keeps shared objects shared, as PyYAML makes them for an alias.)
    """
    if isinstance(value, dict):
        return {key: _unshared(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unshared(item) for item in value]
    return value


def redact_secrets(data: Any) -> Any:
    """A copy of ``data`` with the value of every secret-looking key replaced by ``"***"``.

    A key is secret when it matches :data:`SECRET_KEY_PATTERN` (``secret_access_key``,
    ``password``, ``api_token``, ``credentials``, ...); its whole value is masked, a nested
    mapping included. Unset values (None, "") stay as they are, so that they show as unset.
    """
    if isinstance(data, Mapping):
        return {
            key: (
                SECRET_MASK
                if SECRET_KEY_PATTERN.search(str(key)) and value not in (None, "")
                else redact_secrets(value)
            )
            for key, value in data.items()
        }
    if isinstance(data, list | tuple):
        return [redact_secrets(item) for item in data]
    return data


def default_config_paths() -> list[Path]:
    """Where a config file is looked for, in order; the first that exists is used."""
    return _default_paths(os.environ)


def _default_paths(environ: Mapping[str, str]) -> list[Path]:
    xdg = environ.get("XDG_CONFIG_HOME", "")
    # The XDG spec says a relative XDG_CONFIG_HOME is invalid and must be ignored.
    if not xdg or not Path(xdg).is_absolute():
        home = Path(environ["HOME"]) if environ.get("HOME") else Path.home()
        xdg = str(home / ".config")
    return [
        Path.cwd() / FILE_NAME,
        Path(xdg) / "novacron" / FILE_NAME,
        SYSTEM_CONFIG_DIR / FILE_NAME,
    ]


def load_config(
    path: str | Path | None = None,
    *,
    plugins: NovaCronPluginManager | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> NovaCronConfig:
    """Load, merge and validate the configuration.

    The file is ``path``, else ``$NOVACRON_CONFIG``, else the first of
    :func:`default_config_paths` that exists, else none (defaults only). Values from
    ``NOVACRON_<SECTION>__<KEY>`` variables beat the file; ``overrides`` (dotted key -> value,
    what ``--set`` gives) beat everything. Raises ConfigError listing every problem found.
    """
    env = os.environ if environ is None else environ
    models = _section_models(plugins, env)
    file_path = _choose_file(path, env)
    layers = _Layers()
    if file_path is not None:
        layers.load_file(file_path)
    layers.load_environment(env)
    layers.load_overrides(overrides or {})
    sections = layers.validate(models)
    if layers.problems:
        count = len(layers.problems)
        listing = "\n".join(f"  - {problem}" for problem in layers.problems)
        msg = (
            f"invalid configuration ({count} problem{'s' if count > 1 else ''}):\n{listing}\n"
            "Fix the values above; `novacron config schema` lists every key."
        )
        raise ConfigError(msg)
    sources = {".".join(key): label for key, label in layers.sources.items()}
    return NovaCronConfig(sections, file_path, sources)


def config_schema(plugins: NovaCronPluginManager | None = None) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the whole file: one object, a property per section."""
    from pydantic.json_schema import models_json_schema

    models = _section_models(plugins, os.environ)
    keyed, top = models_json_schema(
        [(model, "validation") for model in models.values()], ref_template="#/$defs/{model}"
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "novacron.yaml",
        "description": "NovaCron configuration: one mapping per section; every key is optional.",
        "type": "object",
        "properties": {name: keyed[(model, "validation")] for name, model in models.items()},
        "additionalProperties": False,
        "$defs": top.get("$defs", {}),
    }


def _section_models(
    plugins: NovaCronPluginManager | None, environ: Mapping[str, str]
) -> dict[str, type[BaseModel]]:
    if plugins is None:
        from novacron_sdk.plugin.manager import build_plugin_manager

        plugins = build_plugin_manager(environ=environ)
    registry = plugins.config_sections
    models: dict[str, type[BaseModel]] = {}
    for name in registry.names():
        model: object = registry.get(name)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            plugin = registry.entry(name).plugin
            msg = (
                f"plugin {plugin!r} registered config section {name!r} as {model!r}, which is "
                "not a pydantic model class; fix or disable the plugin"
            )
            raise ConfigError(msg)
        models[name] = model
    return models


def _choose_file(path: str | Path | None, environ: Mapping[str, str]) -> Path | None:
    if path is not None:
        given, origin = Path(path).expanduser(), "explicitly"
    elif environ.get(CONFIG_ENV):
        given, origin = Path(environ[CONFIG_ENV]).expanduser(), f"by {CONFIG_ENV}"
    else:
        return next((p for p in _default_paths(environ) if p.is_file()), None)
    if not given.exists():
        msg = f"config file {given} (named {origin}) does not exist; create it or name another"
        raise ConfigError(msg)
    if not given.is_file():
        msg = f"config file {given} (named {origin}) is not a regular file"
        raise ConfigError(msg)
    return given


def _parse_scalar(text: str) -> Any:
    """Read an environment or ``--set`` value as YAML, so ``300``, ``true``, ``[1, 2]`` work."""
    if not text:
        return text  # an empty variable means the empty string, not YAML's null
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # "#x" is a YAML comment, i.e. null; keep the text unless null was spelled out.
    return text if value is None and text.strip() not in _NULL_SPELLINGS else value


class _Layers:
    """The merged raw tree, where each key was set, and every problem found so far."""

    def __init__(self) -> None:
        self.tree: dict[str, Any] = {}
        self.sources: dict[Key, str] = {}
        self.problems: list[str] = []

    def load_file(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            msg = f"config file {path} could not be read: {exc}"
            raise ConfigError(msg) from exc
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = None if node is None else loader.construct_document(node)
        except yaml.YAMLError as exc:
            raise ConfigError(_yaml_problem(path, exc)) from exc
        finally:
            loader.dispose()
        if node is None or data is None:
            return
        if not isinstance(data, dict):
            msg = (
                f"{path}: the top level must be a mapping of section names (agent:, "
                f"migration:, ...), not a {type(data).__name__}"
            )
            raise ConfigError(msg)
        # PyYAML shares the object of an anchor with every alias of it: copy, so that an
        # override of one aliased key does not change its siblings too.
        self.tree = _unshared(data)
        self._record_lines(node, (), str(path))

    def _record_lines(self, node: yaml.Node, prefix: Key, label: str) -> None:
        if isinstance(node, yaml.MappingNode):
            first_seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                key, line = str(key_node.value), key_node.start_mark.line + 1
                if key in first_seen and key != "<<":
                    dotted = ".".join((*prefix, key))
                    self.problems.append(
                        f"{label}, line {line}: {dotted} is set twice (first at line "
                        f"{first_seen[key]}); keep one"
                    )
                first_seen.setdefault(key, line)
                self.sources[(*prefix, key)] = f"{label}, line {line}"
                self._record_lines(value_node, (*prefix, key), label)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.sources[(*prefix, str(index))] = f"{label}, line {item.start_mark.line + 1}"
                self._record_lines(item, (*prefix, str(index)), label)

    def load_environment(self, environ: Mapping[str, str]) -> None:
        for name in sorted(environ):
            if not name.upper().startswith(ENV_PREFIX) or "__" not in name:
                continue
            key = tuple(name[len(ENV_PREFIX) :].lower().split("__"))
            label = f"environment variable {name}"
            if not all(key):
                self.problems.append(
                    f"{label}: empty key in the name; use NOVACRON_<SECTION>__<KEY>[__<KEY>...]"
                )
                continue
            self.set(key, _parse_scalar(environ[name]), label)

    def load_overrides(self, overrides: Mapping[str, Any]) -> None:
        for dotted, value in overrides.items():
            key = tuple(dotted.split("."))
            label = f"--set {dotted}"
            if not all(key):
                self.problems.append(f"{label}: empty key in the path; use section.key[.key...]")
                continue
            self.set(key, _parse_scalar(value) if isinstance(value, str) else value, label)

    def set(self, key: Key, value: Any, label: str) -> None:
        """Set ``key`` in the tree; mappings merge into mappings, anything else replaces."""
        node = self.tree
        for depth, part in enumerate(key[:-1], start=1):
            child = node.get(part)
            if not isinstance(child, dict):
                self._forget(key[:depth])
                child = node[part] = {}
            node = child
        if isinstance(value, Mapping) and isinstance(node.get(key[-1]), dict):
            for sub_key, sub_value in value.items():
                self.set((*key, str(sub_key)), sub_value, label)
            return
        self._forget(key)
        node[key[-1]] = _unshared(dict(value)) if isinstance(value, Mapping) else value
        self.sources[key] = label

    def _forget(self, key: Key) -> None:
        for known in [k for k in self.sources if k[: len(key)] == key]:
            del self.sources[known]

    def source_of(self, key: Key) -> str | None:
        """Where the value at ``key`` (or the nearest enclosing key) was set."""
        for end in range(len(key), 0, -1):
            if (label := self.sources.get(key[:end])) is not None:
                return label
        return None

    def validate(self, models: Mapping[str, type[BaseModel]]) -> dict[str, BaseModel]:
        for name in self.tree:
            if name not in models:
                where = [self.sources[(name,)]] if (name,) in self.sources else []
                where = where or sorted({v for k, v in self.sources.items() if k[0] == name})
                known = ", ".join(models) or "none"
                self.problems.append(
                    f"{' and '.join(where) or 'config'}: unknown section {name!r}; known "
                    f"sections: {known}. Is the plugin that provides it installed?"
                )
        sections: dict[str, BaseModel] = {}
        for name, model in models.items():
            raw = self.tree.get(name)
            try:
                sections[name] = model.model_validate({} if raw is None else raw)
            except ValidationError as exc:
                for error in exc.errors(include_url=False):
                    self.problems.append(self._describe(name, model, error))
        return sections

    def _describe(self, section: str, model: type[BaseModel], error: ErrorDetails) -> str:
        key = (section, *(str(part) for part in error["loc"]))
        missing = error["type"] == "missing"
        source = self.source_of(key) or ("no value given" if missing else "default value")
        text = f"{source}: {'.'.join(key)}: {error['msg']}"
        if error["type"] == "extra_forbidden":
            text = f"{source}: {'.'.join(key)}: unknown key{_closest(model, error['loc'])}"
        if not missing:
            shown = repr(error["input"])
            text += f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
        allowed = _allowed(model, error["loc"], error["type"])
        return f"{text}; allowed: {allowed}" if allowed else text


def _yaml_problem(path: Path, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "?"
    problem = getattr(exc, "problem", None) or str(exc)
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and context_mark is not None:
        context = f"{context} at line {context_mark.line + 1}"
    detail = f"{problem} ({context})" if context else problem
    return f"{path}: invalid YAML at {where}: {detail}; fix the syntax there"


def _closest(model: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    """`` (did you mean 'host'?)`` for an unknown key at ``loc``, or "" when none is close."""
    current: Any = model
    for part in loc[:-1]:
        submodel = _model_in(current)
        if submodel is None or str(part) not in submodel.model_fields:
            return ""
        current = submodel.model_fields[str(part)].annotation
    submodel = _model_in(current)
    if submodel is None or not loc:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(submodel.model_fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _allowed(model: type[BaseModel], loc: tuple[int | str, ...], error_type: str) -> str:
    """What the field at ``loc`` accepts: type, constraints and description, as far as known."""
    current: Any = model
    info: FieldInfo | None = None
    for part in loc:
        submodel = _model_in(current)
        if submodel is None:
            break
        if part not in submodel.model_fields:
            if error_type == "extra_forbidden":
                return "the keys " + ", ".join(submodel.model_fields)
            return ""
        info = submodel.model_fields[str(part)]
        current = info.annotation
    if info is None or error_type == "literal_error":  # pydantic's message lists the choices
        return ""
    constraints = [
        f"{symbol} {value}"
        for meta in info.metadata
        for attr, symbol in _CONSTRAINTS
        if (value := getattr(meta, attr, None)) is not None
    ]
    annotation = info.annotation
    kind = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    parts = [" ".join([kind.replace("typing.", ""), ", ".join(constraints)]).strip()]
    if info.description:
        parts.append(info.description)
    return "; ".join(parts)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model in ``annotation`` (``Model`` or ``Model | None``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, UnionType):
        for arg in get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return None
