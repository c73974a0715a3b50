"""Hypervisor drivers: the contract, its migration source/sink, and its hooks."""
