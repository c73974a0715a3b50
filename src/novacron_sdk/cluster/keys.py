"""Where the cluster keeps its records in the state store (one place, so tools agree)."""

from __future__ import annotations

ROOT = "/novacron/"
HOSTS_PREFIX = f"{ROOT}hosts/"
VMS_PREFIX = f"{ROOT}vms/"
CONTROLLER_ELECTION = "controller"


def host_key(name: str) -> str:
    """The key of host ``name``'s registration."""
    return f"{HOSTS_PREFIX}{name}"


def vm_key(vm_id: str) -> str:
    """The key of VM ``vm_id``'s ownership record."""
    return f"{VMS_PREFIX}{vm_id}"
