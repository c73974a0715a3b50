"""Hook implementations of the DWCP consensus work: the ``etcd`` state store."""

from __future__ import annotations

from typing import TYPE_CHECKING

from novacron_sdk.plugin import hookimpl

if TYPE_CHECKING:
    from novacron_sdk.consensus.interface import StateStore
    from novacron_sdk.plugin.registry import Registry


@hookimpl
def novacron_register_state_stores(registry: Registry[type[StateStore]]) -> None:
    """Register the etcd store (lazily: aetcd and grpc load only when it is used)."""
    registry.register(
        "etcd",
        "novacron_dwcp.consensus.etcd_store:EtcdStore",
        priority=-10,  # needs endpoints: never the default over the embedded SQLite store
        description="etcd v3 cluster (3+ members); gRPC via aetcd or the JSON gateway",
    )
