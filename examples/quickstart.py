"""Quickstart: create a sim VM with AsyncClient, show it, then destroy it.

Run it with ``python examples/quickstart.py``. It uses the builtin ``sim`` hypervisor (a
simulator for demos and tests) and keeps its VM records in a temporary file.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from novacron_sdk import AsyncClient
from novacron_sdk.models import VMSpec


async def main() -> None:
    """Create, show and destroy one VM."""
    with tempfile.TemporaryDirectory() as tmp:
        state_file = Path(tmp) / "sim-vms.json"
        overrides = {"drivers.default": "sim", "drivers.settings.sim.state_path": str(state_file)}
        async with AsyncClient(overrides=overrides) as client:
            print(
                "drivers:", ", ".join(f"{name} ({kind})" for name, kind in client.drivers().items())
            )
            vm = await client.create_vm(
                VMSpec(
                    name="quickstart-1",
                    vcpus=2,
                    memory_mib=64,
                    extra={"workload": {"pattern": "idle"}},
                )
            )
            print(f"created {vm.name} ({vm.id}) on {vm.driver}: {vm.state.value}")
            shown = await client.get_vm(vm.id)
            print(shown.model_dump_json(indent=2))
            await client.destroy(vm.id)
            print(f"destroyed {vm.id}; VMs left: {len(await client.list_vms())}")


if __name__ == "__main__":
    asyncio.run(main())
