"""Cluster state: a revisioned key-value store with transactions, leases and watches."""
