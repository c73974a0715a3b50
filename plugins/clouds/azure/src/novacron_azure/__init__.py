"""Azure Virtual Machines driver for NovaCron SDK: the ``azure`` cloud driver."""

from novacron_azure.__about__ import __version__

__all__ = ["__version__"]
