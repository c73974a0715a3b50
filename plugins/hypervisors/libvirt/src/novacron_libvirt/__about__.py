"""The version of novacron-libvirt (read by hatchling)."""

__version__ = "0.1.0"
