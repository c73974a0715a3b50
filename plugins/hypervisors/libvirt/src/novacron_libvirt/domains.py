"""Blocking helpers on libvirt domains (run in worker threads by the driver)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

import libvirt

from novacron_libvirt import convert
from novacron_libvirt.errors import is_not_found
from novacron_sdk.errors import NotFoundError
from novacron_sdk.models import VM

_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$")


def lookup(conn: Any, vm_id: str, uri: str) -> Any:
    """The virDomain whose UUID or name is ``vm_id``; NotFoundError if there is none."""
    if _UUID_RE.match(vm_id):
        try:
            return conn.lookupByUUIDString(vm_id)
        except libvirt.libvirtError as exc:
            if not is_not_found(exc):
                raise
    try:
        return conn.lookupByName(vm_id)
    except libvirt.libvirtError as exc:
        if is_not_found(exc):
            msg = f"no libvirt domain {vm_id!r} on {uri} (list VMs to see the ids)"
            raise NotFoundError(msg, code="VIR_ERR_NO_DOMAIN") from exc
        raise


def find_existing(conn: Any, name: str, uuid: str | None) -> tuple[str, str] | None:
    """(name, UUID) of a domain named ``name`` or with UUID ``uuid``; None if there is none."""
    lookups: list[tuple[Any, str]] = [(conn.lookupByName, name)]
    if uuid:
        lookups.append((conn.lookupByUUIDString, uuid))
    for lookup_by, key in lookups:
        try:
            domain = lookup_by(key)
        except libvirt.libvirtError as exc:
            if not is_not_found(exc):
                raise
            continue
        return str(domain.name()), str(domain.UUIDString())
    return None


def to_vm(domain: Any, *, driver: str, host: str, uri: str) -> VM:
    """The SDK's view of ``domain``."""
    state, reason = domain.state(0)
    _state, max_kib, _memory, vcpus, _cpu_time = domain.info()
    xml = domain.XMLDesc(0)
    return VM(
        id=domain.UUIDString(),
        name=domain.name(),
        state=convert.vm_state(state, reason),
        driver=driver,
        vcpus=vcpus,
        memory_mib=max_kib // 1024,
        image=convert.first_disk_source(xml),
        host=host,
        location=host,
        tags=convert.tags_from_xml(xml),
        extra={
            "uri": uri,
            "persistent": bool(domain.isPersistent()),
            "libvirt_state": state,
            "libvirt_reason": reason,
        },
    )


def undefine(domain: Any) -> None:
    """Remove the domain's definition with its managed save image and snapshot metadata."""
    flags = (
        libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
    )
    try:
        domain.undefineFlags(flags)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_INVALID_ARG):
            raise
        domain.undefine()  # drivers without the flags (test, older ones)


def destroy_and_undefine(domain: Any) -> None:
    """Force the domain off if it runs, then undefine it if it is persistent."""
    if domain.isActive():
        domain.destroy()
    try:
        persistent = domain.isPersistent()
    except libvirt.libvirtError as exc:
        if is_not_found(exc):  # a transient domain vanishes when destroyed
            return
        raise
    if persistent:
        undefine(domain)


def restore(conn: Any, path: str) -> Any:
    """Restore a saved domain from ``path``; return it (running)."""
    root = ET.fromstring(conn.saveImageGetXMLDesc(path, 0))  # noqa: S314 - from libvirt
    conn.restore(path)
    return conn.lookupByName(root.findtext("name"))
