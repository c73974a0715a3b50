"""The placement contract: a policy picks a host for one request, or hosts for a batch.

Policies are pure: they get the hosts' current usage and the request, and return a decision
with alternates and the reasons each rejected host was filtered out.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from novacron_sdk.models import Host


class HostUsage(BaseModel):
    """A host with what is already used on it."""

    model_config = ConfigDict(extra="forbid")

    host: Host
    used_vcpus: int = Field(default=0, ge=0)
    used_memory_mib: int = Field(default=0, ge=0)
    used_gpus: int = Field(default=0, ge=0)
    used_disk_gib: int = Field(default=0, ge=0)
    instances: int = Field(default=0, ge=0)
    groups: dict[str, int] = Field(
        default_factory=dict, description="VMs per affinity/anti-affinity group on this host."
    )

    @property
    def free_vcpus(self) -> int:
        """vCPUs left."""
        return self.host.vcpus - self.used_vcpus

    @property
    def free_memory_mib(self) -> int:
        """Memory left."""
        return self.host.memory_mib - self.used_memory_mib


class PlacementRequest(BaseModel):
    """One VM to place."""

    model_config = ConfigDict(extra="forbid")

    name: str
    vcpus: int = Field(default=1, ge=0)
    memory_mib: int = Field(default=512, ge=0)
    gpus: int = Field(default=0, ge=0)
    disk_gib: int = Field(default=0, ge=0)
    affinity_group: str | None = None
    anti_affinity_group: str | None = None
    required_labels: dict[str, str] = Field(default_factory=dict)
    exclude_hosts: list[str] = Field(default_factory=list)


class PlacementDecision(BaseModel):
    """Where a request goes; ``host_id`` None means no host fits (see ``rejected``)."""

    model_config = ConfigDict(extra="forbid")

    request: str
    host_id: str | None
    alternates: list[str] = Field(default_factory=list)
    rejected: dict[str, str] = Field(
        default_factory=dict, description="Host id -> why it was filtered out."
    )
    policy: str


class PlacementPolicy(ABC):
    """Places single requests; batch placement defaults to one request after the other."""

    name: ClassVar[str] = ""

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self.settings: dict[str, Any] = dict(settings or {})

    @abstractmethod
    def place(self, request: PlacementRequest, hosts: Sequence[HostUsage]) -> PlacementDecision:
        """Choose a host for ``request``."""

    def place_batch(
        self, requests: Sequence[PlacementRequest], hosts: Sequence[HostUsage]
    ) -> list[PlacementDecision]:
        """Place ``requests`` in order, counting each placed VM against its host."""
        usage = {h.host.id: h.model_copy(deep=True) for h in hosts}
        decisions = []
        for request in requests:
            decision = self.place(request, list(usage.values()))
            decisions.append(decision)
            if decision.host_id is not None:
                u = usage[decision.host_id]
                u.used_vcpus += request.vcpus
                u.used_memory_mib += request.memory_mib
                u.used_gpus += request.gpus
                u.used_disk_gib += request.disk_gib
                u.instances += 1
                for group in (request.affinity_group, request.anti_affinity_group):
                    if group:
                        u.groups[group] = u.groups.get(group, 0) + 1
        return decisions
