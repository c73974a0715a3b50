"""The PLUGINNAME driver. The template keeps VMs in memory: replace the bodies with SDK calls.

Import your third-party SDK at the top of this module (not in ``hooks.py``): this module is
only imported when the driver is first used.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from novacron_sdk.config.checks import validation_problems
from novacron_sdk.errors import ConfigError, InvalidStateError, NotFoundError, QuotaExceededError
from novacron_sdk.hypervisors.interface import HypervisorDriver
from novacron_sdk.models import VM, DriverFeature, Host, Page, VMSpec, VMState


class PluginSettings(BaseModel):
    """``drivers.settings.PLUGINNAME``: every key the driver reads, with its default.

    ``extra="forbid"`` makes a mistyped key (``capacity_vm``) an error that names the closest
    known key, as in the SDK's own sections; a plain BaseModel would silently ignore it.
    """

    model_config = ConfigDict(extra="forbid")

    capacity_vms: int = Field(default=100, gt=0, description="How many VMs the host holds.")


class PluginDriver(HypervisorDriver):
    """PLUGINNAME hypervisor driver (template implementation: in-memory VMs)."""

    name: ClassVar[str] = "PLUGINNAME"
    description: ClassVar[str] = "PLUGINNAME hypervisor"
    # Advertise only what the driver really does; callers check this set.
    features: ClassVar[frozenset[DriverFeature]] = frozenset(
        {
            DriverFeature.CREATE,
            DriverFeature.START_STOP,
            DriverFeature.REBOOT,
            DriverFeature.DESTROY,
            DriverFeature.HOSTS,
        }
    )

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        try:
            self.config = PluginSettings.model_validate(self.settings)
        except ValidationError as exc:
            problems = validation_problems(exc, PluginSettings, f"drivers.settings.{self.name}.")
            msg = f"invalid {self.name} driver settings: {problems}"
            raise ConfigError(msg) from exc
        self._capacity = self.config.capacity_vms
        self._vms: dict[str, VM] = {}

    async def _list_vms_page(self, token: str | None, page_size: int) -> Page[VM]:
        vms = sorted(self._vms.values(), key=lambda vm: vm.id)
        start = int(token) if token else 0
        end = start + page_size
        return Page[VM](
            items=tuple(vms[start:end]), next_token=str(end) if end < len(vms) else None
        )

    async def get_vm(self, vm_id: str) -> VM:
        """The VM with id or unique name ``vm_id``."""
        if vm_id in self._vms:
            return self._vms[vm_id]
        matches = [vm for vm in self._vms.values() if vm.name == vm_id]
        if len(matches) == 1:
            return matches[0]
        msg = f"no VM {vm_id!r} on driver {self.name!r}; 'novacron vm list' shows the VMs"
        raise NotFoundError(msg)

    async def create_vm(self, spec: VMSpec) -> VM:
        """Create and start a VM."""
        self.require(DriverFeature.CREATE)
        if len(self._vms) >= self._capacity:
            msg = f"driver {self.name!r} is full ({self._capacity} VMs); destroy one first"
            raise QuotaExceededError(msg)
        vm = VM(
            id=f"{self.name}-{uuid.uuid4().hex[:8]}",
            name=spec.name,
            state=VMState.RUNNING,
            driver=self.name,
            vcpus=spec.vcpus,
            memory_mib=spec.memory_mib,
            image=spec.image,
            size=spec.size,
            location=spec.location,
            host=f"{self.name}-host",
            created_at=datetime.now(UTC),
            tags=dict(spec.tags),
        )
        self._vms[vm.id] = vm
        return vm

    async def _transition(self, vm_id: str, allowed: VMState, new: VMState, action: str) -> VM:
        vm = await self.get_vm(vm_id)
        if vm.state is not allowed:
            msg = f"cannot {action} VM {vm_id!r}: it is {vm.state.value}, not {allowed.value}"
            raise InvalidStateError(msg)
        updated = vm.model_copy(update={"state": new})
        self._vms[vm.id] = updated
        return updated

    async def start(self, vm_id: str) -> VM:
        """Start a stopped VM."""
        self.require(DriverFeature.START_STOP)
        return await self._transition(vm_id, VMState.STOPPED, VMState.RUNNING, "start")

    async def stop(self, vm_id: str) -> VM:
        """Stop a running VM."""
        self.require(DriverFeature.START_STOP)
        return await self._transition(vm_id, VMState.RUNNING, VMState.STOPPED, "stop")

    async def reboot(self, vm_id: str) -> VM:
        """Reboot a running VM."""
        self.require(DriverFeature.REBOOT)
        return await self._transition(vm_id, VMState.RUNNING, VMState.RUNNING, "reboot")

    async def destroy(self, vm_id: str) -> None:
        """Destroy a VM."""
        self.require(DriverFeature.DESTROY)
        vm = await self.get_vm(vm_id)
        del self._vms[vm.id]

    async def list_hosts(self) -> list[Host]:
        """The one host this driver manages."""
        return [
            Host(
                id=f"{self.name}-host",
                name=f"{self.name}-host",
                driver=self.name,
                vcpus=64,
                memory_mib=262144,
            )
        ]
