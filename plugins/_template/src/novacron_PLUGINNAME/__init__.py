"""PLUGINNAME plugin for NovaCron SDK."""  # noqa: N999 - placeholder, renamed on copy

from novacron_PLUGINNAME.__about__ import __version__

__all__ = ["__version__"]
