"""Cluster and request files for ``novacron place``: YAML or JSON, validated with pydantic.

A file may hold ``hosts`` and ``requests`` together or in separate files::

    hosts:
      - {id: h1, vcpus: 32, memory_mib: 131072, gpus: 4, labels: {zone: a}}
      - {id: h2, vcpus: 32, memory_mib: 131072, used_vcpus: 8, instances: 2}
    requests:
      - {name: web-1, vcpus: 4, memory_mib: 8192, anti_affinity_group: web}
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from novacron_sdk.errors import ConfigError
from novacron_sdk.models import Host
from novacron_sdk.placement.interface import HostUsage, PlacementRequest

USAGE_FIELDS = (
    "used_vcpus",
    "used_memory_mib",
    "used_gpus",
    "used_disk_gib",
    "instances",
    "groups",
)

HOST_KEYS = tuple(k for k in Host.model_fields if k != "driver") + USAGE_FIELDS
"""Keys a host entry may have (``driver`` is accepted too, but set by this reader)."""
REQUEST_KEYS = tuple(PlacementRequest.model_fields)
"""Keys a request entry may have."""
DERIVED_HOST_KEYS = ("name", "driver")
"""Host fields this reader fills in when the entry leaves them out."""
MAX_REPORTED = 10
"""Invalid entries reported one per line before the rest are only counted."""

FORMAT_HINT = (
    "novacron place reads YAML/JSON files with a 'hosts' list and/or a 'requests' list "
    "(format: docs/dwcp-placement.md)"
)
CSV_HINT = (
    "CSV is not read directly: convert the rows to hosts/requests first, as "
    "benchmarks/placement.py does for the shared cluster traces"
)


def _hint(path: Path) -> str:
    """What ``novacron place`` reads, and that CSV needs converting when ``path`` is one."""
    return FORMAT_HINT + (f"; {CSV_HINT}" if path.suffix.lower() == ".csv" else "")


def _yaml_problem(path: Path, exc: yaml.YAMLError) -> str:
    """A YAML error as ``FILE, line N, column M: problem (context)``."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        text = f"{path}, line {mark.line + 1}, column {mark.column + 1}: not valid YAML/JSON: "
        text += exc.problem or "syntax error"
        if exc.context:
            text += f" ({exc.context}"
            if exc.context_mark is not None:
                cm = exc.context_mark
                text += f" at line {cm.line + 1}, column {cm.column + 1}"
            text += ")"
        return text
    detail = " ".join(str(exc).replace('"<unicode string>"', f'"{path}"').split())
    return f"{path} is not valid YAML/JSON: {detail}"


def load_document(path: Path) -> dict[str, Any]:
    """Read a YAML/JSON mapping from ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"cannot read {path}: {exc.strerror}; pass a readable YAML/JSON file"
        raise ConfigError(msg) from exc
    except UnicodeDecodeError as exc:
        msg = f"{path} is not a text file (byte {exc.start} is not UTF-8); {_hint(path)}"
        raise ConfigError(msg) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        msg = _yaml_problem(path, exc)
        if path.suffix.lower() == ".csv":
            msg += f"; {_hint(path)}"
        raise ConfigError(msg) from exc
    if not isinstance(data, dict):
        msg = f"{path} must hold a mapping with 'hosts' and/or 'requests'; {_hint(path)}"
        raise ConfigError(msg)
    return data


def _location(loc: tuple[int | str, ...]) -> str:
    """A pydantic location as text: ``labels.zone``, ``exclude_hosts[0]``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def _problems(exc: ValidationError, known: Collection[str], skip: Collection[str] = ()) -> str:
    """A validation error as ``key: problem; key: problem`` without pydantic's dumps and URLs.

    ``skip`` names keys whose errors are left out (filled in by this reader, so an error there
    follows from another key's error that is reported).
    """
    problems: list[str] = []
    for detail in exc.errors():
        loc = tuple(detail["loc"])
        if loc[:1] == ("host",):
            loc = loc[1:]
        if loc and loc[0] in skip:
            continue
        where = _location(loc)
        kind = detail["type"]
        if kind == "missing":
            problem = "field required"
        elif kind == "extra_forbidden":
            problem = "unknown key"
            if len(loc) == 1:
                close = difflib.get_close_matches(str(loc[0]), list(known), n=1)
                problem += f" (did you mean {close[0]!r}?)" if close else ""
                problem += "" if close else f" (known keys: {', '.join(known)})"
        else:
            message = detail["msg"]
            problem = message[:1].lower() + message[1:]
            value = detail.get("input")
            if value is None or isinstance(value, str | int | float | bool):
                shown = repr(value)
                problem += f" (got {shown if len(shown) <= 40 else shown[:37] + '...'})"
        problems.append(f"{where}: {problem}" if where else problem)
    return "; ".join(problems)


def _report(source: str, invalid: list[str]) -> None:
    """Raise one ConfigError listing every invalid entry, one a line."""
    if not invalid:
        return
    lines = [f"{source}: {entry}" for entry in invalid[:MAX_REPORTED]]
    if len(invalid) > MAX_REPORTED:
        lines.append(f"{source}: and {len(invalid) - MAX_REPORTED} more invalid entries")
    raise ConfigError("\n".join(lines))


def _kind(value: object) -> str:
    """A YAML-ish name for the type of ``value``."""
    return "null" if value is None else type(value).__name__


def parse_hosts(raw: object, source: str) -> list[HostUsage]:
    """Hosts with their usage: host fields and ``used_*``/``instances``/``groups`` side by side."""
    if not isinstance(raw, list):
        msg = f"{source}: 'hosts' must be a list of host mappings, got {_kind(raw)}"
        raise ConfigError(msg)
    hosts = []
    invalid: list[str] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            invalid.append(f"hosts[{index}]: must be a mapping of host fields, got {_kind(item)}")
            continue
        usage = {k: item[k] for k in USAGE_FIELDS if k in item}
        fields = {k: v for k, v in item.items() if k not in USAGE_FIELDS}
        if "id" in fields:
            fields.setdefault("name", fields["id"])
        fields.setdefault("driver", "file")
        aggregates = (
            fields.get("extra", {}).get("aggregates")
            if isinstance(fields.get("extra"), dict)
            else None
        )
        if aggregates is not None and not (
            isinstance(aggregates, str)
            or (isinstance(aggregates, list) and all(isinstance(a, str) for a in aggregates))
        ):
            invalid.append(
                f"hosts[{index}]: extra.aggregates must be a list of aggregate names "
                f"(or one name), got {_kind(aggregates)}"
            )
            continue
        try:
            hosts.append(HostUsage.model_validate({"host": fields, **usage}))
        except ValidationError as exc:
            skip = [k for k in DERIVED_HOST_KEYS if k not in item]
            invalid.append(f"hosts[{index}]: {_problems(exc, HOST_KEYS, skip)}")
    _report(source, invalid)
    return hosts


def parse_requests(raw: object, source: str) -> list[PlacementRequest]:
    """Placement requests (the fields of :class:`PlacementRequest`)."""
    if not isinstance(raw, list):
        msg = f"{source}: 'requests' must be a list of request mappings, got {_kind(raw)}"
        raise ConfigError(msg)
    requests = []
    invalid: list[str] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            invalid.append(
                f"requests[{index}]: must be a mapping of request fields, got {_kind(item)}"
            )
            continue
        try:
            requests.append(PlacementRequest.model_validate(item))
        except ValidationError as exc:
            invalid.append(f"requests[{index}]: {_problems(exc, REQUEST_KEYS)}")
    _report(source, invalid)
    return requests


def _missing(path: Path, document: Mapping[str, Any], key: str) -> ConfigError:
    """The error for a document without ``key``, with a close key name if there is one."""
    close = difflib.get_close_matches(key, [str(k) for k in document], n=1)
    spelled = f" (found {close[0]!r}: did you mean {key!r}?)" if close else ""
    return ConfigError(f"{path} has no {key!r} list{spelled}; {_hint(path)}")


def load(cluster: Path, requests: Path | None) -> tuple[list[HostUsage], list[PlacementRequest]]:
    """Hosts from ``cluster``; requests from ``requests`` or, without it, from ``cluster``."""
    document = load_document(cluster)
    if "hosts" not in document:
        raise _missing(cluster, document, "hosts")
    hosts = parse_hosts(document["hosts"], str(cluster))
    source = load_document(requests) if requests else document
    if "requests" not in source:
        raise _missing(requests or cluster, source, "requests")
    return hosts, parse_requests(source["requests"], str(requests or cluster))
