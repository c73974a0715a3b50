"""List the domains and the host of a libvirt connection with the ``libvirt`` plugin.

Install the core with the plugin (``pip install novacron-sdk novacron-libvirt``; the plugin
builds libvirt-python against your libvirt-dev), then run::

    python examples/libvirt_list.py --uri qemu:///system
    python examples/libvirt_list.py --uri test:///default     # libvirt's built-in test host

Any libvirt URI works (``qemu+ssh://user@host/system``, ``qemu:///session``...).
"""

from __future__ import annotations

import argparse
import asyncio

from novacron_sdk import AsyncClient
from novacron_sdk.hypervisors.interface import HypervisorDriver


async def main(args: argparse.Namespace) -> None:
    """Print the host's capacity and every domain, across all pages."""
    overrides = {"drivers.default": "libvirt", "drivers.settings.libvirt.uri": args.uri}
    async with AsyncClient(overrides=overrides) as client:
        driver = client.driver("libvirt")
        if isinstance(driver, HypervisorDriver):
            for host in await driver.list_hosts():
                print(f"host {host.name} ({host.id}): {host.vcpus} vCPUs, {host.memory_mib} MiB")
        print(f"features: {', '.join(sorted(driver.features))}")
        vms = await client.list_vms()
        print(f"{'ID':<37} {'NAME':<24} {'STATE':<10} {'VCPUS':>5} {'MIB':>7}")
        for vm in vms:
            print(
                f"{vm.id:<37} {vm.name:<24} {vm.state.value:<10} {vm.vcpus:>5} {vm.memory_mib:>7}"
            )
        print(f"{len(vms)} domain(s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", default="qemu:///system", help="libvirt connection URI")
    asyncio.run(main(parser.parse_args()))
