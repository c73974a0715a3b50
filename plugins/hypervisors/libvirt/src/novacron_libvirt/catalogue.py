"""What a libvirt connection offers: storage volumes as images, host capacity as sizes/locations."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import libvirt

from novacron_libvirt.convert import SIZE_LADDER
from novacron_sdk.models import Host, Image, Location, Size


def list_volume_images(conn: Any, driver: str) -> list[Image]:
    """Every volume of every active storage pool, as an Image (id = volume key)."""
    images: list[Image] = []
    for pool in sorted(conn.listAllStoragePools(0), key=lambda p: p.name()):
        if not pool.isActive():
            continue
        for volume in sorted(pool.listAllVolumes(0), key=lambda v: v.name()):
            _kind, capacity, allocation = volume.info()
            images.append(
                Image(
                    id=volume.key(),
                    name=f"{pool.name()}/{volume.name()}",
                    driver=driver,
                    extra={
                        "pool": pool.name(),
                        "volume": volume.name(),
                        "path": volume.path(),
                        "capacity_bytes": capacity,
                        "allocation_bytes": allocation,
                        "format": _volume_format(volume.XMLDesc(0)),
                    },
                )
            )
    return images


def _volume_format(xml: str) -> str:
    root = ET.fromstring(xml)  # noqa: S314 - XML produced by the libvirt daemon
    fmt = root.find("target/format")
    return fmt.get("type", "raw") if fmt is not None else "raw"


def find_image(images: list[Image], wanted: str) -> Image | None:
    """The image whose id, ``pool/volume`` name, path or (unique) volume name is ``wanted``."""
    for image in images:
        if wanted in (image.id, image.name, image.extra.get("path")):
            return image
    by_volume = [image for image in images if image.extra.get("volume") == wanted]
    return by_volume[0] if len(by_volume) == 1 else None


def host_facts(conn: Any, uri: str) -> dict[str, Any]:
    """Host name, uuid and capacity of the connection's host."""
    model, memory_mib, cpus, mhz, nodes, sockets, cores, threads = conn.getInfo()
    root = ET.fromstring(conn.getCapabilities())  # noqa: S314 - XML from the libvirt daemon
    return {
        "hostname": conn.getHostname(),
        "uuid": root.findtext("host/uuid") or conn.getHostname(),
        "arch": root.findtext("host/cpu/arch") or model,
        "cpu_model": root.findtext("host/cpu/model") or "",
        "vcpus": int(cpus),
        "memory_mib": int(memory_mib),
        "mhz": int(mhz),
        "numa_nodes": int(nodes),
        "topology": {"sockets": sockets, "cores": cores, "threads": threads},
        "hypervisor": conn.getType(),
        "libvirt_version": conn.getLibVersion(),
        "uri": uri,
    }


def host_model(facts: dict[str, Any], driver: str) -> Host:
    """The Host for ``host_facts``."""
    return Host(
        id=facts["uuid"],
        name=facts["hostname"],
        driver=driver,
        address=facts["uri"],
        vcpus=facts["vcpus"],
        memory_mib=facts["memory_mib"],
        labels={"arch": facts["arch"], "hypervisor": facts["hypervisor"]},
        extra={key: facts[key] for key in ("cpu_model", "mhz", "numa_nodes", "topology")},
    )


def location_model(facts: dict[str, Any], driver: str) -> Location:
    """The host as a Location (id = host uuid)."""
    return Location(
        id=facts["uuid"],
        name=facts["hostname"],
        driver=driver,
        extra={key: facts[key] for key in ("uri", "arch", "cpu_model", "hypervisor")},
    )


def size_models(facts: dict[str, Any], driver: str) -> list[Size]:
    """The standard sizes that fit the host's capacity."""
    return [
        Size(
            id=name,
            name=name,
            vcpus=vcpus,
            memory_mib=memory,
            driver=driver,
            extra={"host": facts["uuid"]},
        )
        for name, vcpus, memory in SIZE_LADDER
        if vcpus <= facts["vcpus"] and memory <= facts["memory_mib"]
    ]


def supports_storage(conn: Any) -> bool:
    """Whether the connection has a storage driver (some remote and test setups do not)."""
    try:
        conn.listAllStoragePools(0)
    except libvirt.libvirtError:
        return False
    return True
