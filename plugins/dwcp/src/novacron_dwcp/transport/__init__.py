"""DWCP transport."""
