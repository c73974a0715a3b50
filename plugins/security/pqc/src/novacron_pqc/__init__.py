"""Post-quantum security for NovaCron: hybrid key exchange, node identity, sealed frames."""

from novacron_pqc.__about__ import __version__

__all__ = ["__version__"]
