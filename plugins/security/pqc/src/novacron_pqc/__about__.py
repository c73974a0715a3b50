"""Version of the novacron-pqc plugin."""

__version__ = "0.1.0"
