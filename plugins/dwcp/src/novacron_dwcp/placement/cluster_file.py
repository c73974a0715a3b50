"""Cluster and request files for ``novacron place``: YAML or JSON, validated with pydantic.

A file may hold ``hosts`` and ``requests`` together or in separate files::

    hosts:
      - {id: h1, vcpus: 32, memory_mib: 131072, gpus: 4, labels: {zone: a}}
      - {id: h2, vcpus: 32, memory_mib: 131072, used_vcpus: 8, instances: 2}
    requests:
      - {name: web-1, vcpus: 4, memory_mib: 8192, anti_affinity_group: web}
"""

from __future__ import annotations

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


def load_document(path: Path) -> dict[str, Any]:
    """Read a YAML/JSON mapping from ``path``."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        msg = f"cannot read {path}: {exc.strerror}"
        raise ConfigError(msg) from exc
    except yaml.YAMLError as exc:
        msg = f"{path} is not valid YAML/JSON: {exc}"
        raise ConfigError(msg) from exc
    if not isinstance(data, dict):
        msg = f"{path} must hold a mapping with 'hosts' and/or 'requests'"
        raise ConfigError(msg)
    return data


def parse_hosts(raw: object, source: str) -> list[HostUsage]:
    """Hosts with their usage: host fields and ``used_*``/``instances``/``groups`` side by side."""
    if not isinstance(raw, list):
        msg = f"{source}: 'hosts' must be a list"
        raise ConfigError(msg)
    hosts = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            msg = f"{source}: hosts[{index}] must be a mapping"
            raise ConfigError(msg)
        usage = {k: item[k] for k in USAGE_FIELDS if k in item}
        fields = {k: v for k, v in item.items() if k not in USAGE_FIELDS}
        fields.setdefault("name", fields.get("id"))
        fields.setdefault("driver", "file")
        try:
            hosts.append(HostUsage(host=Host(**fields), **usage))
        except ValidationError as exc:
            msg = f"{source}: hosts[{index}] is invalid: {exc}"
            raise ConfigError(msg) from exc
    return hosts


def parse_requests(raw: object, source: str) -> list[PlacementRequest]:
    """Placement requests (the fields of :class:`PlacementRequest`)."""
    if not isinstance(raw, list):
        msg = f"{source}: 'requests' must be a list"
        raise ConfigError(msg)
    requests = []
    for index, item in enumerate(raw):
        try:
            requests.append(PlacementRequest.model_validate(item))
        except ValidationError as exc:
            msg = f"{source}: requests[{index}] is invalid: {exc}"
            raise ConfigError(msg) from exc
    return requests


def load(cluster: Path, requests: Path | None) -> tuple[list[HostUsage], list[PlacementRequest]]:
    """Hosts from ``cluster``; requests from ``requests`` or, without it, from ``cluster``."""
    document = load_document(cluster)
    if "hosts" not in document:
        msg = f"{cluster} has no 'hosts' list"
        raise ConfigError(msg)
    hosts = parse_hosts(document["hosts"], str(cluster))
    source = load_document(requests) if requests else document
    if "requests" not in source:
        msg = f"{requests or cluster} has no 'requests' list"
        raise ConfigError(msg)
    return hosts, parse_requests(source["requests"], str(requests or cluster))
