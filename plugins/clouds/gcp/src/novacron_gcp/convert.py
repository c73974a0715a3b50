"""Convert Compute Engine messages into the SDK's models, and specs into instance resources."""

from __future__ import annotations

import re
from datetime import datetime

from google.cloud import compute_v1

from novacron_gcp.settings import GcpSettings
from novacron_sdk.errors import DriverError
from novacron_sdk.models import VM, Image, Size, VMSpec, VMState

DRIVER = "gcp"
STATES = {
    "PROVISIONING": VMState.PENDING,
    "STAGING": VMState.PENDING,
    "RUNNING": VMState.RUNNING,
    "STOPPING": VMState.STOPPING,
    "SUSPENDING": VMState.STOPPING,
    "SUSPENDED": VMState.PAUSED,
    "REPAIRING": VMState.PENDING,
    # Compute Engine calls a stopped instance TERMINATED; it can be started again.
    "TERMINATED": VMState.STOPPED,
}
EXTRA_KEYS = frozenset({"spot", "preemptible", "network_tags", "subnetwork", "network"})
_CUSTOM = re.compile(r"(?:^|-)custom-(?P<vcpus>\d+)-(?P<memory>\d+)(?:-ext)?$")


def last_segment(url: str) -> str:
    """``zones/europe-west1-b`` or a full URL -> ``europe-west1-b``."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def vm_id(zone: str, name: str) -> str:
    """The SDK id of an instance: ``zone/name`` (names are unique per zone)."""
    return f"{zone}/{name}"


def custom_shape(machine_type: str) -> tuple[int, int] | None:
    """(vCPUs, memory MiB) that a custom machine type's name states (``n2-custom-4-8192``)."""
    match = _CUSTOM.search(machine_type)
    return (int(match["vcpus"]), int(match["memory"])) if match else None


def instance_to_vm(instance: compute_v1.Instance, shape: tuple[int, int] | None = None) -> VM:
    """A Compute Engine instance as a VM; ``shape`` is its machine type's (vCPUs, memory MiB).

    An instance names its machine type but not its size; unknown values are 0.
    """
    vcpus, memory_mib = shape or (0, 0)
    zone = last_segment(instance.zone)
    created = instance.creation_timestamp
    private = [nic.network_i_p for nic in instance.network_interfaces if nic.network_i_p]
    public = [
        config.nat_i_p
        for nic in instance.network_interfaces
        for config in nic.access_configs
        if config.nat_i_p
    ]
    scheduling = instance.scheduling
    return VM(
        id=vm_id(zone, instance.name),
        name=instance.name,
        state=STATES.get(instance.status, VMState.UNKNOWN),
        driver=DRIVER,
        vcpus=vcpus,
        memory_mib=memory_mib,
        size=last_segment(instance.machine_type) if instance.machine_type else None,
        location=zone,
        created_at=datetime.fromisoformat(created) if created else None,
        private_ips=tuple(private),
        public_ips=tuple(public),
        tags=dict(instance.labels),
        extra={
            "instance_id": str(instance.id) if instance.id else None,
            "status": instance.status,
            "spot": scheduling.provisioning_model == "SPOT",
            "preemptible": bool(scheduling.preemptible),
            "network_tags": list(instance.tags.items),
            "self_link": instance.self_link,
        },
    )


def instance_resource(spec: VMSpec, cfg: GcpSettings, zone: str) -> compute_v1.Instance:
    """The instance resource that creates ``spec`` in ``zone``."""
    unknown = set(spec.extra) - EXTRA_KEYS
    if unknown:
        msg = (
            f"spec.extra has keys the gcp driver does not know: {sorted(unknown)}; "
            f"known: {sorted(EXTRA_KEYS)}"
        )
        raise DriverError(msg, code="InvalidParameter")
    extra = spec.extra
    machine_type = spec.size or cfg.default_machine_type
    disk = compute_v1.AttachedDiskInitializeParams(source_image=spec.image or cfg.default_image)
    if spec.disk_gib:
        disk.disk_size_gb = spec.disk_gib
    nic = compute_v1.NetworkInterface(network=extra.get("network") or cfg.network)
    subnetwork = extra.get("subnetwork") or cfg.subnetwork
    if subnetwork:
        nic.subnetwork = subnetwork
    instance = compute_v1.Instance(
        name=spec.name,
        machine_type=f"zones/{zone}/machineTypes/{machine_type}",
        disks=[compute_v1.AttachedDisk(boot=True, auto_delete=True, initialize_params=disk)],
        network_interfaces=[nic],
        labels=dict(spec.tags),
    )
    network_tags = list(extra.get("network_tags") or cfg.network_tags)
    if network_tags:
        instance.tags = compute_v1.Tags(items=network_tags)
    if extra.get("spot"):
        instance.scheduling = compute_v1.Scheduling(
            provisioning_model="SPOT", instance_termination_action="STOP"
        )
    elif extra.get("preemptible"):
        instance.scheduling = compute_v1.Scheduling(preemptible=True)
    return instance


def machine_type_to_size(item: compute_v1.MachineType) -> Size:
    """A machine type as a Size."""
    return Size(
        id=item.name,
        name=item.name,
        vcpus=int(item.guest_cpus),
        memory_mib=int(item.memory_mb),
        gpus=sum(int(a.guest_accelerator_count) for a in item.accelerators),
        driver=DRIVER,
        extra={"shared_cpu": bool(item.is_shared_cpu), "zone": item.zone or None},
    )


def image_to_model(item: compute_v1.Image, project: str) -> Image:
    """An image as an Image; the id is the path instances boot from."""
    return Image(
        id=f"projects/{project}/global/images/{item.name}",
        name=item.name,
        driver=DRIVER,
        extra={"family": item.family or None, "status": item.status or None},
    )
