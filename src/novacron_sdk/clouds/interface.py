"""The cloud driver contract: a compute driver with regions and waits for state changes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from novacron_sdk.clouds.settings import CloudSettings
from novacron_sdk.compute.interface import ComputeDriver
from novacron_sdk.errors import DriverError
from novacron_sdk.models import VM, VMState

ProgressCallback = Callable[[VM, float], None]
"""Called with the VM as last seen and the seconds waited so far."""

log = logging.getLogger(__name__)


def log_progress(vm: VM, waited: float) -> None:
    """The default progress callback: one INFO line per poll."""
    log.info("waiting for %s (%s): %s after %.0fs", vm.name, vm.id, vm.state.value, waited)


class CloudDriver(ComputeDriver):
    """Base class for public-cloud drivers (AWS, Azure, GCP)."""

    progress: ProgressCallback | None = None
    """Called while actions wait for a state (default: :func:`log_progress`)."""

    async def settle(self, vm: VM, target: VMState, settings: CloudSettings) -> VM:
        """``vm`` after an action; with ``settings.wait`` on, once it has reached ``target``."""
        if not settings.wait or vm.state == target:
            return vm
        return await self.wait_for_state(
            vm.id,
            target,
            timeout=settings.wait_timeout,
            interval=settings.wait_interval,
            progress=self.progress or log_progress,
        )

    async def wait_for_state(
        self,
        vm_id: str,
        target: VMState,
        *,
        timeout: float = 600.0,
        interval: float = 2.0,
        progress: ProgressCallback | None = None,
    ) -> VM:
        """Poll until the VM reaches ``target``; raise DriverError after ``timeout`` seconds."""
        started = time.monotonic()
        while True:
            vm = await self.get_vm(vm_id)
            waited = time.monotonic() - started
            if progress is not None:
                progress(vm, waited)
            if vm.state == target:
                return vm
            if vm.state == VMState.ERROR:
                msg = f"VM {vm_id!r} went to state 'error' while waiting for {target.value!r}"
                raise DriverError(msg)
            if waited >= timeout:
                msg = (
                    f"VM {vm_id!r} is still {vm.state.value!r} after {timeout:.0f}s waiting "
                    f"for {target.value!r}; raise the timeout or check the provider console"
                )
                raise DriverError(msg)
            await asyncio.sleep(interval)
