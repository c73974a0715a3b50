"""The version of novacron-aws (read by hatchling)."""

__version__ = "0.1.0"
