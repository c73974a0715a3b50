"""The module named by the ``novacron_sdk`` entry point: registers the ``aws`` cloud driver.

NovaCron imports this module every time it starts, so it must stay cheap: the driver is
registered as a lazy reference and boto3 is imported only when the driver is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from novacron_sdk.plugin import hookimpl

if TYPE_CHECKING:
    from novacron_sdk.clouds.interface import CloudDriver
    from novacron_sdk.plugin.registry import Registry


@hookimpl
def novacron_register_clouds(registry: Registry[type[CloudDriver]]) -> None:
    """Register the EC2 driver under the name ``aws``."""
    registry.register(
        "aws", "novacron_aws.driver:AwsDriver", description="Amazon EC2 instances (boto3)"
    )
