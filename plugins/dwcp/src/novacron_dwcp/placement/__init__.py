"""DWCP placement."""
