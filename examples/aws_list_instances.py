"""List the EC2 instances of one region with the ``aws`` cloud plugin.

Install the core with the plugin (``pip install novacron-sdk novacron-aws``), then run::

    python examples/aws_list_instances.py --region eu-west-1 [--profile NAME]

Credentials come from the AWS default chain (environment, ``~/.aws``, SSO, instance role)
unless ``drivers.settings.aws`` in your novacron config names a profile or keys.
``--endpoint-url`` points the driver at another EC2 endpoint, e.g. a local moto server.
"""

from __future__ import annotations

import argparse
import asyncio

from novacron_sdk import AsyncClient


async def main(args: argparse.Namespace) -> None:
    """Print every instance of the region, across all pages."""
    overrides = {"drivers.default": "aws"}
    for key in ("region", "profile", "endpoint_url"):
        value = getattr(args, key)
        if value:
            overrides[f"drivers.settings.aws.{key}"] = value
    async with AsyncClient(overrides=overrides) as client:
        vms = await client.list_vms()
        print(f"{'ID':<21} {'NAME':<24} {'STATE':<10} {'TYPE':<12} ZONE")
        for vm in vms:
            print(
                f"{vm.id:<21} {vm.name:<24} {vm.state.value:<10} {vm.size or '-':<12} "
                f"{vm.location or '-'}"
            )
        print(f"{len(vms)} instance(s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--region", help="AWS region (default: the AWS chain's)")
    parser.add_argument("--profile", help="profile in ~/.aws/config")
    parser.add_argument("--endpoint-url", dest="endpoint_url", help="EC2 endpoint URL")
    asyncio.run(main(parser.parse_args()))
