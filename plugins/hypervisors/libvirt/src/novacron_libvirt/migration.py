"""Live-migrate a libvirt/QEMU domain with QEMU's own stream carried by a NovaCron transport.

QEMU sends its migration stream to a unix socket (libvirt migration URI ``unix://<path>``);
a :class:`~novacron_libvirt.bridge.StreamBridgeSource` there carries every connection
(main channel, then multifd channels, in order) over the transport to a
:class:`~novacron_libvirt.bridge.StreamBridgeSink`, which feeds the destination QEMU's
incoming socket. libvirt drives the migration protocol (begin, prepare, perform, finish,
confirm) between the two connections, so a failure before switch-over leaves the domain
running at the source.

The path in the URI is resolved by each QEMU on its own host. On two hosts it is the same
path twice; on one machine the two daemons run in separate mount namespaces (see
``novacron_libvirt.testing.daemon``) and the bridge uses the two real paths behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import libvirt
from pydantic import BaseModel, ConfigDict, Field

from novacron_libvirt.bridge import StreamBridgeSink, StreamBridgeSource
from novacron_libvirt.driver import LibvirtDriver
from novacron_libvirt.errors import translate
from novacron_sdk.errors import MigrationAbortedError, MigrationError, NovaCronError
from novacron_sdk.migration.models import MigrationSettings
from novacron_sdk.models import VM
from novacron_sdk.transport.interface import Endpoint, Transport

_POSTCOPY_POLL_S = 0.05


class StreamMigrationResult(BaseModel):
    """What a stream migration did, from the bridge's counters and QEMU's job statistics."""

    model_config = ConfigDict(extra="forbid")

    vm: VM
    transport: str
    total_s: float
    downtime_ms: float | None = Field(default=None, description="QEMU's measured downtime.")
    connections: int = Field(description="Connections QEMU opened (1 + multifd channels).")
    bytes_to_destination: int
    bytes_from_destination: int
    postcopy_started: bool = Field(default=False, description="QEMU switched to post-copy.")
    qemu_stats: dict[str, Any] = Field(default_factory=dict)


def migration_flags_and_params(
    settings: MigrationSettings, uri: str, destination_xml: str | None = None
) -> tuple[int, dict[str, Any]]:
    """libvirt migration flags and typed parameters for ``settings`` and migration ``uri``."""
    flags = libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    params: dict[str, Any] = {libvirt.VIR_MIGRATE_PARAM_URI: uri}
    if settings.precopy:
        flags |= libvirt.VIR_MIGRATE_LIVE
    if settings.auto_converge:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
        params[libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL] = round(
            settings.throttle_initial * 100
        )
        params[libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT] = round(
            settings.throttle_increment * 100
        )
    if settings.multifd_channels > 0:
        flags |= libvirt.VIR_MIGRATE_PARALLEL
        params[libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS] = settings.multifd_channels
    if settings.postcopy:
        flags |= libvirt.VIR_MIGRATE_POSTCOPY
    if settings.max_bandwidth_bps is not None:
        # libvirt takes MiB/s; never round a cap down to "unlimited" (0).
        mib_per_s = max(1, int(settings.max_bandwidth_bps / 8 / (1024 * 1024)))
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = mib_per_s
        if settings.postcopy:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY] = mib_per_s
    if destination_xml is not None:
        params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = destination_xml
    return flags, params


def rewrite_paths(xml: str, paths: Mapping[str, str]) -> str:
    """``xml`` with every attribute or text equal to a key of ``paths`` replaced by its value.

    Use it for a destination XML whose host-local paths (serial sockets, logs) differ.
    """
    root = ET.fromstring(xml)  # noqa: S314 - XML produced by the libvirt daemon
    for element in root.iter():
        for key, value in element.attrib.items():
            if value in paths:
                element.set(key, paths[value])
        if element.text is not None and element.text in paths:
            element.text = paths[element.text]
    return ET.tostring(root, encoding="unicode")


async def migrate_stream(
    source: LibvirtDriver,
    destination: LibvirtDriver,
    vm_id: str,
    *,
    transport: Transport,
    qemu_socket: Path,
    source_socket: Path | None = None,
    destination_socket: Path | None = None,
    settings: MigrationSettings | None = None,
    destination_xml: str | None = None,
    listen: Endpoint | None = None,
) -> StreamMigrationResult:
    """Live-migrate ``vm_id`` from ``source`` to ``destination`` through ``transport``.

    ``qemu_socket`` is the unix socket path both QEMUs are given; ``source_socket`` and
    ``destination_socket`` are the same sockets as this process sees them (default: the
    same path). Raises MigrationError (the VM still runs at the source) on failure, and
    MigrationAbortedError when ``settings.timeout_s`` passed.
    """
    settings = settings or MigrationSettings()
    session = secrets.token_hex(8)
    sink = StreamBridgeSink(
        transport, listen or Endpoint(), destination_socket or qemu_socket, session
    )
    await sink.start()
    bridge = StreamBridgeSource(transport, sink.endpoint, source_socket or qemu_socket, session)
    started = time.monotonic()
    try:
        await bridge.start()
        domain = await source.ex_domain(vm_id)
        try:
            await asyncio.to_thread(
                domain.migrateSetMaxDowntime, int(settings.downtime_limit_ms), 0
            )
        except libvirt.libvirtError as exc:
            raise translate(exc, f"set the downtime limit of {vm_id!r}") from exc
        flags, params = migration_flags_and_params(
            settings, f"unix://{qemu_socket}", destination_xml
        )
        moved, postcopy_started = await _run_migration(destination, domain, flags, params, settings)
        total_s = time.monotonic() - started
        stats = await _completed_stats(moved)
        vm = await destination.ex_vm_from_domain(moved)
    finally:
        await bridge.close()
        await sink.close()
    return StreamMigrationResult(
        vm=vm,
        transport=transport.name,
        total_s=total_s,
        downtime_ms=stats.get("downtime"),
        connections=bridge.stats.connections,
        bytes_to_destination=bridge.stats.bytes_to_destination,
        bytes_from_destination=bridge.stats.bytes_from_destination,
        postcopy_started=postcopy_started,
        qemu_stats=stats,
    )


async def _run_migration(
    destination: LibvirtDriver,
    domain: Any,
    flags: int,
    params: dict[str, Any],
    settings: MigrationSettings,
) -> tuple[Any, bool]:
    """Run libvirt's migration job; return the destination domain and whether post-copy ran."""
    name = domain.name()
    job = asyncio.create_task(
        asyncio.to_thread(domain.migrate3, destination.ex_connection, params, flags)
    )
    switcher = asyncio.create_task(_switch_to_postcopy(domain, job)) if settings.postcopy else None
    try:
        done, _pending = await asyncio.wait({job}, timeout=settings.timeout_s)
        if not done:
            await asyncio.to_thread(_abort_quietly, domain)
            await asyncio.gather(job, return_exceptions=True)
            msg = (
                f"migration of {name!r} did not finish within {settings.timeout_s} s and was "
                "aborted; the VM runs at the source (raise migration.timeout_s or the bandwidth)"
            )
            raise MigrationAbortedError(msg)
        moved = job.result()
    except libvirt.libvirtError as exc:
        cause = translate(exc, f"migrate {name!r}")
        msg = f"migration of {name!r} failed, the VM runs at the source: {cause}"
        raise MigrationError(msg) from exc
    finally:
        if switcher is not None and not switcher.done():
            switcher.cancel()
        if switcher is not None:
            await asyncio.gather(switcher, return_exceptions=True)
    switched = switcher is not None and not switcher.cancelled() and switcher.result()
    return moved, bool(switched)


async def _switch_to_postcopy(domain: Any, job: asyncio.Task[Any]) -> bool:
    """Once pre-copy runs, ask QEMU to switch to post-copy (the first pass has started)."""
    while not job.done():
        try:
            info = await asyncio.to_thread(domain.jobInfo)
        except libvirt.libvirtError:
            return False  # the domain left the source: the migration finished first
        if info[0] != libvirt.VIR_DOMAIN_JOB_NONE and info[3] > 0:  # type, ..., data processed
            try:
                await asyncio.to_thread(domain.migrateStartPostCopy, 0)
            except libvirt.libvirtError:
                await asyncio.sleep(_POSTCOPY_POLL_S)  # not switchable yet (or finished)
                continue
            return True
        await asyncio.sleep(_POSTCOPY_POLL_S)
    return False


def _abort_quietly(domain: Any) -> None:
    with contextlib.suppress(libvirt.libvirtError):  # the job may have ended meanwhile
        domain.abortJob()


async def _completed_stats(domain: Any) -> dict[str, Any]:
    """QEMU's statistics of the completed migration (libvirt hands them to the destination)."""
    try:
        stats = await asyncio.to_thread(domain.jobStats, libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    except (libvirt.libvirtError, NovaCronError):
        return {}
    return dict(stats)


__all__ = [
    "StreamMigrationResult",
    "migrate_stream",
    "migration_flags_and_params",
    "rewrite_paths",
]
