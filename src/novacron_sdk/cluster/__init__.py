"""Cluster state on a StateStore: hosts under leases, the elected controller, VM ownership."""

from novacron_sdk.cluster.controller import ClusterController, current_controller
from novacron_sdk.cluster.hosts import HostMembership, HostRecord, list_hosts
from novacron_sdk.cluster.ownership import (
    OwnerRecord,
    claim_vm,
    destination_fence,
    get_owner,
    list_owners,
    record_owner,
    release_vm,
    source_fence,
)
from novacron_sdk.cluster.status import ClusterStatus, cluster_status

__all__ = [
    "ClusterController",
    "ClusterStatus",
    "HostMembership",
    "HostRecord",
    "OwnerRecord",
    "claim_vm",
    "cluster_status",
    "current_controller",
    "destination_fence",
    "get_owner",
    "list_hosts",
    "list_owners",
    "record_owner",
    "release_vm",
    "source_fence",
]
