"""Google Compute Engine driver for NovaCron SDK: the ``gcp`` cloud driver."""

from novacron_gcp.__about__ import __version__

__all__ = ["__version__"]
