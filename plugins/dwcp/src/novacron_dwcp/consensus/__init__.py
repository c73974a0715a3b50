"""Cluster state on etcd: the ``etcd`` state store, its clients and a local test cluster."""
