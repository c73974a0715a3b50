"""List the Compute Engine instances of a project, in every zone, with the ``gcp`` cloud plugin.

Install the core with the plugin (``pip install novacron-sdk novacron-gcp``), then run::

    python examples/gcp_list_instances.py --project PROJECT_ID

Credentials are application default credentials (``gcloud auth application-default login``,
``GOOGLE_APPLICATION_CREDENTIALS``, the metadata server) unless ``drivers.settings.gcp`` in
your novacron config names a ``credentials_file``.
"""

from __future__ import annotations

import argparse
import asyncio

from novacron_sdk import AsyncClient


async def main(args: argparse.Namespace) -> None:
    """Print every instance of the project, across all pages."""
    overrides = {"drivers.default": "gcp"}
    if args.project:
        overrides["drivers.settings.gcp.project"] = args.project
    async with AsyncClient(overrides=overrides) as client:
        vms = await client.list_vms()
        print(f"{'ID':<40} {'STATE':<10} {'MACHINE TYPE':<16} LABELS")
        for vm in vms:
            labels = ",".join(f"{k}={v}" for k, v in vm.tags.items()) or "-"
            print(f"{vm.id:<40} {vm.state.value:<10} {vm.size or '-':<16} {labels}")
        print(f"{len(vms)} instance(s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", help="project id (default: the credentials' project)")
    asyncio.run(main(parser.parse_args()))
