"""Amazon EC2 driver for NovaCron SDK: the ``aws`` cloud driver, built on boto3."""

from novacron_aws.__about__ import __version__

__all__ = ["__version__"]
