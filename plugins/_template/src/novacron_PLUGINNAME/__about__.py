"""The version of novacron-PLUGINNAME (read by hatchling)."""

__version__ = "0.1.0"
