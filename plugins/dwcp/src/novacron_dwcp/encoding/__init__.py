"""DWCP encoding."""
