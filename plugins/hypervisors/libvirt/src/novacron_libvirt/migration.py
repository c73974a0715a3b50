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
import logging
import secrets
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import libvirt
from pydantic import BaseModel, ConfigDict, Field

from novacron_libvirt.bridge import StreamBridgeSink, StreamBridgeSource, default_codec
from novacron_libvirt.driver import LibvirtDriver
from novacron_libvirt.errors import translate
from novacron_libvirt.pagerefs import boot_files, shared_files
from novacron_libvirt.streamcodec import CODEC_ZSTD
from novacron_sdk.compute.interface import ProgressCallback, StreamMigrationProgress
from novacron_sdk.errors import MigrationAbortedError, MigrationError, NovaCronError
from novacron_sdk.migration.models import MigrationSettings
from novacron_sdk.models import VM
from novacron_sdk.transport.interface import Endpoint, Transport

logger = logging.getLogger(__name__)
_POSTCOPY_POLL_S = 0.05
_PROGRESS_S = 0.5


class StreamMigrationResult(BaseModel):
    """What a stream migration did, from the bridge's counters and QEMU's job statistics."""

    model_config = ConfigDict(extra="forbid")

    vm: VM
    transport: str
    total_s: float
    downtime_ms: float | None = Field(default=None, description="QEMU's measured downtime.")
    connections: int = Field(description="Connections QEMU opened (1 + multifd channels).")
    bytes_to_destination: int = Field(description="QEMU's stream toward the destination.")
    bytes_from_destination: int
    frame_bytes_to_destination: int = Field(
        default=0, description="What the transport carried for it (after the bridge's codec)."
    )
    codec: str = Field(default="raw", description="The bridge's stream codec.")
    referenced_pages: int = Field(
        default=0, description="RAM pages sent as references to the guest's boot files."
    )
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


def rewrite_path_prefixes(xml: str, prefixes: Mapping[str, str]) -> str:
    """``xml`` with every attribute or text under a directory key of ``prefixes`` moved.

    ``{"/srv/a": "/srv/b"}`` turns ``/srv/a/x.sock`` into ``/srv/b/x.sock`` (whole path
    components only: ``/srv/ab`` stays). The longest matching prefix wins.
    """
    if not prefixes:
        return xml
    ordered = sorted(((k.rstrip("/"), v.rstrip("/")) for k, v in prefixes.items()), reverse=True)

    def moved(value: str) -> str:
        for old, new in ordered:
            if value == old or value.startswith(old + "/"):
                return new + value[len(old) :]
        return value

    root = ET.fromstring(xml)  # noqa: S314 - XML produced by the libvirt daemon
    for element in root.iter():
        for key, value in element.attrib.items():
            element.set(key, moved(value))
        if element.text is not None:
            element.text = moved(element.text)
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
    page_references: bool = True,
) -> StreamMigrationResult:
    """Live-migrate ``vm_id`` from ``source`` to ``destination`` through ``transport``.

    Both ends in one process: the destination's sink (:func:`open_sink`) and the source's
    half (:func:`migrate_out`). ``qemu_socket`` is the unix socket path both QEMUs are given;
    ``source_socket`` and ``destination_socket`` are the same sockets as this process sees
    them (default: the same path). ``page_references``: with a compressing bridge (over
    DWCP), RAM pages found in the guest's direct-boot kernel and initrd go as references to
    the destination's copies (:func:`~novacron_libvirt.pagerefs.boot_files`). Raises
    MigrationError (the VM still runs at the source) on failure, and MigrationAbortedError
    when ``settings.timeout_s`` passed. A migration that completes although it was aborted
    (libvirt refuses to abort post-copy) returns its result, with a warning logged.
    """
    session = secrets.token_hex(8)
    references: list[Path] = []
    if page_references and default_codec(transport) == CODEC_ZSTD:
        xml = destination_xml or await source.ex_domain_xml(vm_id)
        references = await asyncio.to_thread(boot_files, xml)
    sink = await open_sink(
        transport,
        destination_socket or qemu_socket,
        session,
        listen or Endpoint(),
        reference_files=references,
    )
    try:
        return await migrate_out(
            source,
            destination,
            vm_id,
            transport=transport,
            endpoint=sink.endpoint,
            session=session,
            qemu_socket=qemu_socket,
            source_socket=source_socket,
            settings=settings,
            destination_xml=destination_xml,
            reference_digests=sink.reference_digests,
        )
    finally:
        await sink.close()


async def open_sink(
    transport: Transport,
    socket_path: Path,
    session: str,
    listen: Endpoint,
    *,
    reference_files: Sequence[Path] = (),
) -> StreamBridgeSink:
    """The destination's half: a started sink feeding the QEMU socket at ``socket_path``.

    ``reference_files``: this host's files a source may send page references to (its
    :attr:`~StreamBridgeSink.reference_digests` tell the source which ones).
    """
    sink = StreamBridgeSink(
        transport, listen, socket_path, session, reference_files=reference_files
    )
    await sink.start()
    return sink


async def source_references(
    source: LibvirtDriver, vm_id: str, digests: Sequence[str]
) -> list[Path]:
    """The domain's boot files whose SHA-256 the sink announced (none if it announced none)."""
    if not digests:
        return []
    files = await asyncio.to_thread(boot_files, await source.ex_domain_xml(vm_id))
    return await asyncio.to_thread(shared_files, files, set(digests))


async def migrate_out(
    source: LibvirtDriver,
    destination: LibvirtDriver,
    vm_id: str,
    *,
    transport: Transport,
    endpoint: Endpoint,
    session: str,
    qemu_socket: Path,
    source_socket: Path | None = None,
    settings: MigrationSettings | None = None,
    destination_xml: str | None = None,
    on_progress: ProgressCallback | None = None,
    reference_digests: Sequence[str] = (),
) -> StreamMigrationResult:
    """The source's half: carry QEMU's stream to the sink at ``endpoint`` and migrate.

    ``destination`` is a connection to the destination's libvirt daemon, which libvirt
    needs for the prepare and finish steps. ``on_progress`` gets QEMU's job statistics
    about every half second. ``reference_digests``: the reference files the sink holds
    (:attr:`StreamBridgeSink.reference_digests`); the domain's boot files among them are
    given to the bridge. Raises as :func:`migrate_stream` does.
    """
    settings = settings or MigrationSettings()
    references = await source_references(source, vm_id, reference_digests)
    bridge = StreamBridgeSource(
        transport,
        endpoint,
        source_socket or qemu_socket,
        session,
        reference_files=references,
    )
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
        watch = _Watch(bridge, on_progress)
        moved, postcopy_started = await _run_migration(
            destination, domain, flags, params, settings, watch=watch
        )
        total_s = time.monotonic() - started
        stats = await _completed_stats(moved)
        vm = await destination.ex_vm_from_domain(moved)
    finally:
        await bridge.close()
    return StreamMigrationResult(
        vm=vm,
        transport=transport.name,
        total_s=total_s,
        downtime_ms=stats.get("downtime"),
        connections=bridge.stats.connections,
        bytes_to_destination=bridge.stats.bytes_to_destination,
        bytes_from_destination=bridge.stats.bytes_from_destination,
        frame_bytes_to_destination=bridge.stats.frame_bytes_to_destination,
        codec=bridge.stats.codec,
        referenced_pages=bridge.stats.referenced_pages,
        postcopy_started=postcopy_started,
        qemu_stats=stats,
    )


class _Watch:
    """Reports QEMU's job statistics of a running migration to a progress callback."""

    def __init__(self, bridge: StreamBridgeSource, callback: ProgressCallback | None) -> None:
        self.bridge = bridge
        self.callback = callback

    async def run(self, domain: Any, job: asyncio.Task[Any]) -> None:
        if self.callback is None:
            return
        while not job.done():
            await asyncio.sleep(_PROGRESS_S)
            try:
                stats = await asyncio.to_thread(domain.jobStats, 0)
            except libvirt.libvirtError:
                return  # the domain left the source: the migration finished
            if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
                continue
            progress = StreamMigrationProgress(
                iteration=int(stats.get("memory_iteration", 0)),
                memory_total=int(stats.get("memory_total", 0)),
                memory_processed=int(stats.get("memory_processed", 0)),
                memory_remaining=int(stats.get("memory_remaining", 0)),
                page_size=int(stats.get("memory_page_size", 4096)) or 4096,
                bytes_on_wire=self.bridge.stats.frame_bytes_to_destination,
                data={k: v for k, v in stats.items() if isinstance(v, int | float)},
            )
            try:
                self.callback(progress)
            except Exception:
                # A broken listener must not break the migration it watches.
                logger.exception("stream migration progress callback failed")


async def _run_migration(
    destination: LibvirtDriver,
    domain: Any,
    flags: int,
    params: dict[str, Any],
    settings: MigrationSettings,
    *,
    watch: _Watch,
) -> tuple[Any, bool]:
    """Run libvirt's migration job; return the destination domain and whether post-copy ran."""
    name = domain.name()
    job = asyncio.create_task(
        asyncio.to_thread(domain.migrate3, destination.ex_connection, params, flags)
    )
    switcher = asyncio.create_task(_switch_to_postcopy(domain, job)) if settings.postcopy else None
    watcher = asyncio.create_task(watch.run(domain, job))
    try:
        try:
            done, _pending = await asyncio.wait({job}, timeout=settings.timeout_s)
        except asyncio.CancelledError:
            # The caller gave up: abort the job so the guest stays at the source. If the job
            # completed anyway (post-copy, or it finished first), the guest has moved: say so.
            if not await _abort_and_settle(domain, job, name, "cancelled"):
                raise
            done = {job}
        if not done and not await _abort_and_settle(domain, job, name, "timed out"):
            msg = (
                f"migration of {name!r} did not finish within {settings.timeout_s} s and "
                "was aborted; the VM runs at the source (raise migration.timeout_s or the "
                "bandwidth)"
            )
            raise MigrationAbortedError(msg)
        moved = job.result()
    except libvirt.libvirtError as exc:
        cause = translate(exc, f"migrate {name!r}")
        msg = f"migration of {name!r} failed, the VM runs at the source: {cause}"
        raise MigrationError(msg) from exc
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
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


async def _abort_and_settle(domain: Any, job: asyncio.Task[Any], name: str, why: str) -> bool:
    """Abort the migration job and wait for it; True if it completed all the same.

    libvirt refuses ``abortJob`` once post-copy runs, and the job may finish between the
    decision and the abort: then the guest runs at the destination and the caller must
    report the migration's result, not a rollback. It also refuses it before the job has
    started (``migrate3`` is still preparing it, slow on a busy host): the abort is repeated
    until the job ends, or the migration would run to its end after the timeout or cancel.
    """
    while not job.done():
        await asyncio.to_thread(_abort_quietly, domain)
        await asyncio.wait({job}, timeout=_ABORT_RETRY_S)
    await asyncio.gather(job, return_exceptions=True)
    if job.cancelled() or job.exception() is not None:
        return False
    logger.warning(
        "migration of %r %s, but the abort came too late: the migration completed and the "
        "VM now runs at the destination",
        name,
        why,
    )
    return True


_ABORT_RETRY_S = 0.2
"""How often an abort is repeated while libvirt's migration job has not ended."""


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
    "migrate_out",
    "migrate_stream",
    "migration_flags_and_params",
    "open_sink",
    "rewrite_path_prefixes",
    "rewrite_paths",
]
