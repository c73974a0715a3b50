"""Transports: channels of ordered, integrity-checked frames between two hosts."""
