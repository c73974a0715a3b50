"""DWCP prediction."""
