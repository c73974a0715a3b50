"""Convert ARM virtual machine JSON into the SDK's models, and specs into ARM request bodies."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from novacron_azure.settings import AzureSettings
from novacron_sdk.errors import DriverError
from novacron_sdk.models import VM, Image, Size, VMSpec, VMState

DRIVER = "azure"
# A tag create_vm puts on the VM it creates: a random token per create_vm call, so that a
# retried PUT refused by If-None-Match can tell its own earlier attempt's VM from another's.
# Not shown in VM.tags.
CREATE_TAG = "novacron-create-request"
POWER_STATES = {
    "starting": VMState.PENDING,
    "running": VMState.RUNNING,
    "stopping": VMState.STOPPING,
    "stopped": VMState.STOPPED,
    "deallocating": VMState.STOPPING,
    "deallocated": VMState.STOPPED,
    "restarting": VMState.REBOOTING,
}
EXTRA_KEYS = frozenset(
    {
        "spot",
        "spot_max_price",
        "zone",
        "resource_group",
        "subnet_id",
        "network_security_group_id",
        "admin_username",
        "ssh_public_key",
    }
)
VM_ID = re.compile(
    r"^/subscriptions/[^/]+/resourceGroups/(?P<rg>[^/]+)/providers/"
    r"Microsoft\.Compute/virtualMachines/(?P<name>[^/]+)$",
    re.IGNORECASE,
)


def resource_group_of(resource_id: str) -> str:
    """The resource group named in an ARM resource id."""
    match = VM_ID.match(resource_id)
    if match is None:
        msg = f"{resource_id!r} is not a virtual machine resource id"
        raise DriverError(msg, code="InvalidResourceId")
    return match["rg"]


def state_of(vm: dict[str, Any]) -> VMState:
    """The VM's state from its provisioning state and instance view power state."""
    props = vm.get("properties") or {}
    provisioning = str(props.get("provisioningState") or "").lower()
    if provisioning == "failed":
        return VMState.ERROR
    if provisioning == "deleting":
        return VMState.TERMINATED
    statuses = (props.get("instanceView") or {}).get("statuses") or []
    for status in statuses:
        code = str(status.get("code") or "")
        if code.startswith("PowerState/"):
            return POWER_STATES.get(code.split("/", 1)[1], VMState.UNKNOWN)
    if provisioning == "creating":
        return VMState.PENDING
    return VMState.UNKNOWN


def image_of(props: dict[str, Any]) -> str | None:
    """The image a VM booted from, as a URN or an image resource id."""
    ref = (props.get("storageProfile") or {}).get("imageReference") or {}
    if ref.get("id"):
        return str(ref["id"])
    parts = [ref.get(k) for k in ("publisher", "offer", "sku", "version")]
    return ":".join(str(p) for p in parts) if all(parts) else None


def size_of(vm: dict[str, Any]) -> str | None:
    """The VM size (``Standard_B1s``) of an ARM virtual machine."""
    size = ((vm.get("properties") or {}).get("hardwareProfile") or {}).get("vmSize")
    return str(size) if size else None


def vm_from_arm(vm: dict[str, Any], shape: tuple[int, int] | None = None) -> VM:
    """An ARM virtual machine (JSON as ``as_dict()`` gives it) as a VM.

    ``shape`` is its size's (vCPUs, memory MiB): a VM names its size but not what it holds.
    vCPUs the VM was limited to (``vmSizeProperties.vCPUsAvailable``) win; unknown values
    are 0.
    """
    props = vm.get("properties") or {}
    vcpus, memory_mib = shape or (0, 0)
    hardware = props.get("hardwareProfile") or {}
    vcpus = int((hardware.get("vmSizeProperties") or {}).get("vCPUsAvailable") or vcpus)
    created = props.get("timeCreated")
    zones = vm.get("zones") or []
    nics = (props.get("networkProfile") or {}).get("networkInterfaceConfigurations") or []
    groups = [
        ((nic.get("properties") or {}).get("networkSecurityGroup") or {}).get("id") for nic in nics
    ]
    return VM(
        id=str(vm["id"]),
        name=str(vm["name"]),
        state=state_of(vm),
        driver=DRIVER,
        vcpus=vcpus,
        memory_mib=memory_mib,
        image=image_of(props),
        size=size_of(vm),
        location=vm.get("location"),
        created_at=datetime.fromisoformat(created) if isinstance(created, str) else created,
        tags={k: v for k, v in (vm.get("tags") or {}).items() if k != CREATE_TAG},
        extra={
            "resource_group": resource_group_of(str(vm["id"])),
            "vm_id": props.get("vmId"),
            "provisioning_state": props.get("provisioningState"),
            "spot": props.get("priority") == "Spot",
            "eviction_policy": props.get("evictionPolicy"),
            "network_security_groups": [g for g in groups if g],
            "zones": list(zones),
        },
    )


def image_reference(image: str) -> dict[str, str]:
    """The ARM ``imageReference`` for a URN (publisher:offer:sku:version) or a resource id."""
    if image.startswith("/subscriptions/"):
        return {"id": image}
    parts = image.split(":")
    if len(parts) != 4 or not all(parts):
        msg = (
            f"spec.image {image!r} is neither a 'publisher:offer:sku:version' URN (version may "
            "be 'latest') nor an image resource id"
        )
        raise DriverError(msg, code="InvalidParameter")
    return dict(zip(("publisher", "offer", "sku", "version"), parts, strict=True))


def size_shape(item: dict[str, Any]) -> tuple[int, int]:
    """(vCPUs, memory MiB) of an entry of the vmSizes list."""
    return int(item.get("numberOfCores") or 0), int(item.get("memoryInMB") or 0)


def size_from_arm(item: dict[str, Any]) -> Size:
    """An entry of the vmSizes list as a Size."""
    vcpus, memory_mib = size_shape(item)
    return Size(
        id=str(item["name"]),
        name=str(item["name"]),
        vcpus=vcpus,
        memory_mib=memory_mib,
        disk_gib=int(item.get("resourceDiskSizeInMB") or 0) // 1024,
        driver=DRIVER,
        extra={"max_data_disks": item.get("maxDataDiskCount")},
    )


def custom_image_from_arm(item: dict[str, Any]) -> Image:
    """A managed image (Microsoft.Compute/images) as an Image."""
    return Image(
        id=str(item["id"]),
        name=str(item.get("name") or item["id"]),
        driver=DRIVER,
        extra={"location": item.get("location"), "kind": "managed"},
    )


def create_body(spec: VMSpec, cfg: AzureSettings) -> tuple[str, dict[str, Any]]:
    """The resource group and the ARM request body that create ``spec``."""
    unknown = set(spec.extra) - EXTRA_KEYS
    if unknown:
        msg = (
            f"spec.extra has keys the azure driver does not know: {sorted(unknown)}; "
            f"known: {sorted(EXTRA_KEYS)}"
        )
        raise DriverError(msg, code="InvalidParameter")
    extra = spec.extra
    group = extra.get("resource_group") or cfg.resource_group
    location = spec.location or cfg.location
    image = spec.image or cfg.default_image
    for value, what in ((group, "resource_group"), (location, "location"), (image, "image")):
        if not value:
            msg = f"spec.{what} (or drivers.settings.azure.{what}) is required to create a VM"
            raise DriverError(msg, code="MissingParameter")
        os_disk: dict[str, Any] = {"createOption": "FromImage", "deleteOption": "Delete"}
    if spec.disk_gib:
        os_disk["diskSizeGB"] = spec.disk_gib
    props: dict[str, Any] = {
        "hardwareProfile": {"vmSize": spec.size or cfg.default_size},
        "storageProfile": {"imageReference": image_reference(str(image)), "osDisk": os_disk},
    }
    user = extra.get("admin_username") or cfg.admin_username
    key = extra.get("ssh_public_key") or cfg.ssh_public_key
    if key:
        props["osProfile"] = {
            "computerName": spec.name,
            "adminUsername": user,
            "linuxConfiguration": {
                "disablePasswordAuthentication": True,
                "ssh": {
                    "publicKeys": [{"path": f"/home/{user}/.ssh/authorized_keys", "keyData": key}]
                },
            },
        }
    subnet = extra.get("subnet_id") or cfg.subnet_id
    if subnet:
        nic: dict[str, Any] = {
            "primary": True,
            "deleteOption": "Delete",
            "ipConfigurations": [{"name": "ipconfig1", "properties": {"subnet": {"id": subnet}}}],
        }
        group_id = extra.get("network_security_group_id") or cfg.network_security_group_id
        if group_id:
            nic["networkSecurityGroup"] = {"id": group_id}
        # VM-managed NICs: no azure-mgmt-network dependency; deleted with the VM.
        props["networkProfile"] = {
            "networkApiVersion": "2020-11-01",
            "networkInterfaceConfigurations": [{"name": f"{spec.name}-nic", "properties": nic}],
        }
    if extra.get("spot"):
        props["priority"] = "Spot"
        props["evictionPolicy"] = "Deallocate"
        props["billingProfile"] = {"maxPrice": float(extra.get("spot_max_price", -1))}
    body: dict[str, Any] = {"location": location, "tags": dict(spec.tags), "properties": props}
    if extra.get("zone"):
        body["zones"] = [str(extra["zone"])]
    return str(group), body
