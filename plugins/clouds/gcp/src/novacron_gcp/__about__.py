"""The version of novacron-gcp (read by hatchling)."""

__version__ = "0.1.0"
