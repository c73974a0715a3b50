"""Convert EC2 API dictionaries into the SDK's models."""

from __future__ import annotations

from typing import Any

from novacron_sdk.models import VM, Image, Size, VMState

DRIVER = "aws"
STATES = {
    "pending": VMState.PENDING,
    "running": VMState.RUNNING,
    "stopping": VMState.STOPPING,
    "stopped": VMState.STOPPED,
    "shutting-down": VMState.STOPPING,
    "terminated": VMState.TERMINATED,
}
GONE_STATES = frozenset({"shutting-down", "terminated"})
LIVE_STATES = ("pending", "running", "stopping", "stopped")


def tags_of(resource: dict[str, Any]) -> dict[str, str]:
    """The tags of an EC2 resource as a plain mapping."""
    return {str(t["Key"]): str(t.get("Value", "")) for t in resource.get("Tags", [])}


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    """A mapping as EC2's ``[{"Key": ..., "Value": ...}]``."""
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def instance_type_shape(item: dict[str, Any]) -> tuple[int, int]:
    """(default vCPUs, memory MiB) of an entry of DescribeInstanceTypes."""
    vcpus = int((item.get("VCpuInfo") or {}).get("DefaultVCpus", 0))
    return vcpus, int((item.get("MemoryInfo") or {}).get("SizeInMiB", 0))


def instance_to_vm(instance: dict[str, Any], shape: tuple[int, int] | None = None) -> VM:
    """An EC2 instance (from DescribeInstances or RunInstances) as a VM.

    ``shape`` is its instance type's (vCPUs, memory MiB): an instance does not carry its
    memory. The vCPUs come from the instance's CpuOptions when it has them (they may differ
    from the type's default), else from ``shape``; unknown values are 0.
    """
    tags = tags_of(instance)
    name = tags.pop("Name", None) or str(instance["InstanceId"])
    cpu = instance.get("CpuOptions") or {}
    type_vcpus, memory_mib = shape or (0, 0)
    vcpus = int(cpu.get("CoreCount", 0)) * int(cpu.get("ThreadsPerCore", 1)) or type_vcpus
    private = [
        str(address["PrivateIpAddress"])
        for interface in instance.get("NetworkInterfaces", [])
        for address in interface.get("PrivateIpAddresses", [])
        if address.get("PrivateIpAddress")
    ]
    if not private and instance.get("PrivateIpAddress"):
        private = [str(instance["PrivateIpAddress"])]
    public = [str(instance["PublicIpAddress"])] if instance.get("PublicIpAddress") else []
    return VM(
        id=str(instance["InstanceId"]),
        name=name,
        state=STATES.get(str(instance.get("State", {}).get("Name")), VMState.UNKNOWN),
        driver=DRIVER,
        vcpus=vcpus,
        memory_mib=memory_mib,
        image=instance.get("ImageId"),
        size=instance.get("InstanceType"),
        location=(instance.get("Placement") or {}).get("AvailabilityZone"),
        created_at=instance.get("LaunchTime"),
        private_ips=tuple(private),
        public_ips=tuple(public),
        tags=tags,
        extra={
            "spot": instance.get("InstanceLifecycle") == "spot",
            "security_groups": [g["GroupId"] for g in instance.get("SecurityGroups", [])],
            "vpc_id": instance.get("VpcId"),
            "subnet_id": instance.get("SubnetId"),
            "state_reason": (instance.get("StateReason") or {}).get("Message"),
        },
    )


def instance_type_to_size(item: dict[str, Any]) -> Size:
    """An entry of DescribeInstanceTypes as a Size."""
    gpus = sum(int(g.get("Count", 0)) for g in (item.get("GpuInfo") or {}).get("Gpus", []))
    storage = item.get("InstanceStorageInfo") or {}
    vcpus, memory_mib = instance_type_shape(item)
    return Size(
        id=str(item["InstanceType"]),
        name=str(item["InstanceType"]),
        vcpus=vcpus,
        memory_mib=memory_mib,
        disk_gib=int(storage.get("TotalSizeInGB", 0)),
        gpus=gpus,
        driver=DRIVER,
        extra={
            "architectures": list(
                (item.get("ProcessorInfo") or {}).get("SupportedArchitectures", [])
            ),
            "current_generation": item.get("CurrentGeneration"),
        },
    )


def image_to_model(item: dict[str, Any]) -> Image:
    """An AMI as an Image."""
    return Image(
        id=str(item["ImageId"]),
        name=str(item.get("Name") or item["ImageId"]),
        driver=DRIVER,
        extra={
            "owner_id": item.get("OwnerId"),
            "architecture": item.get("Architecture"),
            "state": item.get("State"),
            "description": item.get("Description"),
        },
    )
