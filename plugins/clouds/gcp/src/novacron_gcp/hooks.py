"""The module named by the ``novacron_sdk`` entry point: registers the ``gcp`` cloud driver.

NovaCron imports this module every time it starts, so it must stay cheap: the driver is
registered as a lazy reference, and ``google.cloud.compute_v1`` (about 2 s to import) is
imported only when the driver is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from novacron_sdk.plugin import hookimpl

if TYPE_CHECKING:
    from novacron_sdk.clouds.interface import CloudDriver
    from novacron_sdk.plugin.registry import Registry


@hookimpl
def novacron_register_clouds(registry: Registry[type[CloudDriver]]) -> None:
    """Register the Compute Engine driver under the name ``gcp``."""
    registry.register(
        "gcp",
        "novacron_gcp.driver:GcpDriver",
        description="Google Compute Engine instances (google-cloud-compute)",
    )
