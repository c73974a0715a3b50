"""DWCP, the NovaCron data plane: transport, encoding, prediction and placement plugins."""

from novacron_dwcp.__about__ import __version__

__all__ = ["__version__"]
