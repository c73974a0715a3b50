"""The version of novacron-azure (read by hatchling)."""

__version__ = "0.1.0"
