"""List the Azure virtual machines of a subscription with the ``azure`` cloud plugin.

Install the core with the plugin (``pip install novacron-sdk novacron-azure``), then run::

    python examples/azure_list_instances.py --subscription SUBSCRIPTION_ID [--resource-group RG]

Credentials come from ``DefaultAzureCredential`` (environment variables, workload or managed
identity, ``az login``...) unless ``drivers.settings.azure`` in your novacron config names a
service principal (tenant_id, client_id, client_secret).
"""

from __future__ import annotations

import argparse
import asyncio

from novacron_sdk import AsyncClient


async def main(args: argparse.Namespace) -> None:
    """Print every VM of the subscription (or resource group), across all pages."""
    overrides = {"drivers.default": "azure"}
    if args.subscription:
        overrides["drivers.settings.azure.subscription_id"] = args.subscription
    if args.resource_group:
        overrides["drivers.settings.azure.resource_group"] = args.resource_group
    async with AsyncClient(overrides=overrides) as client:
        vms = await client.list_vms()
        print(f"{'NAME':<24} {'STATE':<10} {'SIZE':<18} {'LOCATION':<14} RESOURCE GROUP")
        for vm in vms:
            print(
                f"{vm.name:<24} {vm.state.value:<10} {vm.size or '-':<18} "
                f"{vm.location or '-':<14} {vm.extra.get('resource_group', '-')}"
            )
        print(f"{len(vms)} VM(s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscription", help="subscription id (default: AZURE_SUBSCRIPTION_ID)")
    parser.add_argument("--resource-group", dest="resource_group", help="only this group")
    asyncio.run(main(parser.parse_args()))
