"""Translate between the SDK's models and libvirt: states, domain XML, host capacity."""

from __future__ import annotations

import difflib
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

import libvirt

from novacron_sdk.errors import DriverError
from novacron_sdk.models import VMSpec, VMState

METADATA_NS = "https://novacron.dev/xmlns/libvirt/1"
ET.register_namespace("novacron", METADATA_NS)

_STATES: dict[int, VMState] = {
    libvirt.VIR_DOMAIN_NOSTATE: VMState.UNKNOWN,
    libvirt.VIR_DOMAIN_RUNNING: VMState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: VMState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: VMState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: VMState.STOPPING,
    libvirt.VIR_DOMAIN_SHUTOFF: VMState.STOPPED,
    libvirt.VIR_DOMAIN_CRASHED: VMState.ERROR,
    libvirt.VIR_DOMAIN_PMSUSPENDED: VMState.PAUSED,
}
_MIGRATION_PAUSE_REASONS = frozenset(
    {
        libvirt.VIR_DOMAIN_PAUSED_MIGRATION,
        libvirt.VIR_DOMAIN_PAUSED_POSTCOPY,
    }
)

# Driver-specific keys of VMSpec.extra (documented in docs/libvirt.md).
SPEC_EXTRA_KEYS = frozenset(
    {"kernel", "initrd", "cmdline", "serial_log", "serial_socket", "machine", "domain_xml"}
)


# The code of a DriverError for a request the driver rejects before asking libvirt (the
# clouds' convention too): the agent answers it with HTTP 422, not 502.
INVALID_INPUT = "InvalidParameter"


# What XML 1.0 cannot carry (libvirt-python refuses a NUL with a bare ValueError, libvirt
# any other control character with a parse error dumping the whole XML).
_NOT_XML_CHARS = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _check_xml_text(what: str, value: str) -> None:
    """DriverError ``InvalidParameter`` naming ``what`` if ``value`` has a non-XML character."""
    bad = _NOT_XML_CHARS.search(value)
    if bad is not None:
        msg = (
            f"{what} has the character {bad.group()!r} at position {bad.start()}, which XML "
            "(and so libvirt) cannot store: remove control characters other than tab and "
            "newline"
        )
        raise DriverError(msg, code=INVALID_INPUT)


def _check_spec_text(spec: VMSpec) -> None:
    for key, value in spec.tags.items():
        _check_xml_text(f"tag key {key!r}", key)
        _check_xml_text(f"tag {key!r}", value)
    for key, value in spec.extra.items():
        _check_xml_text(f"spec.extra[{key!r}]", str(value))


def _with_close_match(key: str) -> str:
    close = difflib.get_close_matches(key, sorted(SPEC_EXTRA_KEYS), n=1)
    return f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key)


def vm_state(state: int, reason: int) -> VMState:
    """The SDK state for libvirt's (state, reason) pair."""
    if state == libvirt.VIR_DOMAIN_PAUSED and reason in _MIGRATION_PAUSE_REASONS:
        return VMState.MIGRATING
    return _STATES.get(state, VMState.UNKNOWN)


def domain_xml(
    spec: VMSpec,
    *,
    domain_type: str,
    arch: str,
    disk_path: str | None = None,
    disk_format: str = "raw",
) -> str:
    """Domain XML for ``spec`` on a connection whose domains have type ``domain_type``."""
    extra = spec.extra
    unknown = sorted(set(extra) - SPEC_EXTRA_KEYS)
    if unknown:
        named = ", ".join(_with_close_match(key) for key in unknown)
        msg = (
            f"spec.extra has keys the libvirt driver does not know: {named} "
            f"(known: {', '.join(sorted(SPEC_EXTRA_KEYS))})"
        )
        raise DriverError(msg, code=INVALID_INPUT)
    _check_spec_text(spec)
    if "domain_xml" in extra:
        return _named_domain_xml(str(extra["domain_xml"]), spec.name, spec.tags)
    root = ET.Element("domain", type=domain_type)
    ET.SubElement(root, "name").text = spec.name
    ET.SubElement(root, "memory", unit="MiB").text = str(spec.memory_mib)
    ET.SubElement(root, "vcpu").text = str(spec.vcpus)
    _set_tags(root, spec.tags)
    os_element = ET.SubElement(root, "os")
    os_type = ET.SubElement(os_element, "type", arch=arch)
    os_type.text = "hvm"
    if "machine" in extra:
        os_type.set("machine", str(extra["machine"]))
    for key in ("kernel", "initrd", "cmdline"):
        if key in extra:
            ET.SubElement(os_element, key).text = str(extra[key])
    if disk_path is None and "kernel" not in extra:
        ET.SubElement(os_element, "boot", dev="hd")
    ET.SubElement(root, "on_poweroff").text = "destroy"
    ET.SubElement(root, "on_reboot").text = "restart"
    ET.SubElement(root, "on_crash").text = "destroy"
    _add_devices(root, extra, disk_path, disk_format)
    return ET.tostring(root, encoding="unicode")


def _add_devices(
    root: ET.Element, extra: Mapping[str, Any], disk_path: str | None, disk_format: str
) -> None:
    devices = ET.SubElement(root, "devices")
    if disk_path is not None:
        disk = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type=disk_format)
        ET.SubElement(disk, "source", file=disk_path)
        ET.SubElement(disk, "target", dev="vda", bus="virtio")
    if "serial_socket" in extra:
        serial = ET.SubElement(devices, "serial", type="unix")
        ET.SubElement(serial, "source", mode="bind", path=str(extra["serial_socket"]))
    elif "serial_log" in extra:
        serial = ET.SubElement(devices, "serial", type="file")
        ET.SubElement(serial, "source", path=str(extra["serial_log"]), append="on")
    else:
        serial = ET.SubElement(devices, "serial", type="pty")
    ET.SubElement(serial, "target", port="0")
    ET.SubElement(devices, "memballoon", model="none")


def _set_tags(root: ET.Element, tags: Mapping[str, str]) -> None:
    """Store ``tags`` in the domain's ``<metadata>``, replacing NovaCron tags already there."""
    if not tags:
        return
    metadata = root.find("metadata")
    if metadata is None:
        metadata = ET.SubElement(root, "metadata")
    for old in metadata.findall(f"{{{METADATA_NS}}}tags"):
        metadata.remove(old)
    element = ET.SubElement(metadata, f"{{{METADATA_NS}}}tags")
    for key, value in sorted(tags.items()):
        ET.SubElement(element, f"{{{METADATA_NS}}}tag", key=key, value=value)


def _named_domain_xml(xml: str, name: str, tags: Mapping[str, str]) -> str:
    """The caller's domain XML with its name set to ``name`` and ``tags`` in its metadata."""
    try:
        root = ET.fromstring(xml)  # noqa: S314 - the caller's own domain XML, not remote input
    except ET.ParseError as exc:
        msg = f"spec.extra['domain_xml'] is not valid XML: {exc}"
        raise DriverError(msg, code=INVALID_INPUT) from exc
    name_element = root.find("name")
    if name_element is None:
        name_element = ET.SubElement(root, "name")
    name_element.text = name
    _set_tags(root, tags)
    return ET.tostring(root, encoding="unicode")


def domain_identity(xml: str) -> tuple[str, str | None]:
    """The ``<name>`` and ``<uuid>`` (None when absent) of domain XML made by :func:`domain_xml`."""
    root = ET.fromstring(xml)  # noqa: S314 - produced by domain_xml above
    return root.findtext("name") or "", (root.findtext("uuid") or "").strip() or None


def tags_from_xml(xml: str) -> dict[str, str]:
    """The NovaCron tags stored in a domain's metadata."""
    root = ET.fromstring(xml)  # noqa: S314 - XML produced by the libvirt daemon
    tags = root.find(f"metadata/{{{METADATA_NS}}}tags")
    if tags is None:
        return {}
    return {
        tag.get("key", ""): tag.get("value", "") for tag in tags.findall(f"{{{METADATA_NS}}}tag")
    }


def first_disk_source(xml: str) -> str | None:
    """The path (or volume) of the domain's first disk, if it has one."""
    root = ET.fromstring(xml)  # noqa: S314 - XML produced by the libvirt daemon
    source = root.find("devices/disk/source")
    if source is None:
        return None
    return source.get("file") or source.get("dev") or source.get("volume")


def host_arch(capabilities_xml: str) -> str:
    """The host CPU architecture from capabilities XML (x86_64 when absent)."""
    root = ET.fromstring(capabilities_xml)  # noqa: S314 - XML produced by the libvirt daemon
    return root.findtext("host/cpu/arch") or "x86_64"


def guest_domain_types(capabilities_xml: str, arch: str) -> list[str]:
    """Domain types (kvm, qemu, test...) the connection can run for guests of ``arch``."""
    root = ET.fromstring(capabilities_xml)  # noqa: S314 - XML produced by the libvirt daemon
    types: list[str] = []
    for guest in root.findall("guest"):
        arch_element = guest.find("arch")
        if arch_element is None or arch_element.get("name") != arch:
            continue
        for domain in arch_element.findall("domain"):
            kind = domain.get("type")
            if kind and kind not in types:
                types.append(kind)
    return types


# Sizes offered on every host: (name, vcpus, memory MiB); those above capacity are left out.
SIZE_LADDER: tuple[tuple[str, int, int], ...] = (
    ("tiny", 1, 128),
    ("small", 1, 512),
    ("medium", 2, 2048),
    ("large", 4, 8192),
    ("xlarge", 8, 16384),
    ("2xlarge", 16, 32768),
    ("4xlarge", 32, 65536),
)
