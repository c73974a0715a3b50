"""Stream migration between two agents: the libvirt driver's offer, prepare and migrate-out.

The agents call these through the compute contract (``stream_migration_offer``,
``prepare_stream_migration``, ``migrate_stream_out``); they split
:func:`~novacron_libvirt.migration.migrate_stream` into its two halves, one per host:

- the destination defines the domain from the source's migratable XML (host-local paths
  moved by ``migration_path_map``) and starts a :class:`StreamBridgeSink` toward its QEMU's
  incoming socket; its ticket names that sink, the socket path QEMU uses and the libvirt URI
  the source reaches this daemon at (``migration_uri``);
- the source runs the :class:`StreamBridgeSource` and ``virDomainMigrate3`` toward it.

A failure anywhere leaves the guest running at the source; the destination's domain, which
the destination defined for this migration only, is undefined again (by the destination's
``finish``, and by the source too, through its libvirt connection, in case the destination
agent is gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import libvirt

from novacron_libvirt import domains
from novacron_libvirt.bridge import default_codec
from novacron_libvirt.errors import is_not_found, translate
from novacron_libvirt.migration import migrate_out, open_sink, rewrite_path_prefixes
from novacron_libvirt.pagerefs import boot_files
from novacron_libvirt.settings import LibvirtSettings, check_absolute
from novacron_libvirt.streamcodec import CODEC_ZSTD
from novacron_sdk.compute.interface import (
    IncomingStreamMigration,
    ProgressCallback,
    StreamMigrationOffer,
    StreamMigrationOutcome,
    StreamMigrationTicket,
)
from novacron_sdk.errors import (
    ConfigError,
    InvalidStateError,
    MigrationError,
    NotFoundError,
    SecurityError,
)
from novacron_sdk.migration.models import MigrationSettings
from novacron_sdk.models import VM
from novacron_sdk.transport.interface import Endpoint, Transport

if TYPE_CHECKING:
    from novacron_libvirt.bridge import StreamBridgeSink
    from novacron_libvirt.driver import LibvirtDriver

logger = logging.getLogger(__name__)

DEFAULT_MIGRATION_DIR = "/run/novacron-libvirt"
SOCKET_NAME = re.compile(r"nc-[A-Za-z0-9_-]{1,24}\.sock")
"""The migration socket names :func:`prepare` makes (``nc-<session>.sock``)."""
_MIGRATABLE_XML = 8  # VIR_DOMAIN_XML_MIGRATABLE


@dataclass(frozen=True)
class StreamSettings:
    """The driver settings of stream migrations (``drivers.settings.libvirt``)."""

    migration_dir: Path
    """Where QEMU finds the migration sockets (same path on every host)."""
    migration_local_dir: Path
    """The same directory as the agent sees it (differs only in test labs)."""
    migration_uri: str
    """The libvirt URI other hosts reach this host's daemon at."""
    migration_path_map: dict[str, str] = field(default_factory=dict)
    """Source directory -> directory here, applied to the incoming domain's XML."""
    page_references: bool = True
    """Send RAM pages found in the guest's direct-boot kernel and initrd as references."""

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], uri: str) -> StreamSettings:
        """Read and check the settings; ConfigError names a bad one.

        A key that is absent or None (``migration_uri:`` with no value in YAML) takes its
        default: ``migration_dir`` ``/run/novacron-libvirt``, ``migration_local_dir``
        ``migration_dir``, ``migration_uri`` ``uri``.
        """
        path_map = _or_default(settings, "migration_path_map", {})
        if not isinstance(path_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in path_map.items()
        ):
            msg = "libvirt setting migration_path_map must map directory paths to paths"
            raise ConfigError(msg)
        directory = Path(_text(settings, "migration_dir", DEFAULT_MIGRATION_DIR))
        local = Path(_text(settings, "migration_local_dir", str(directory)))
        for key, path in (("migration_dir", directory), ("migration_local_dir", local)):
            check_absolute(key, str(path))
        page_references = _or_default(settings, "page_references", True)
        if not isinstance(page_references, bool):
            msg = "libvirt setting page_references must be true or false"
            raise ConfigError(msg)
        return cls(
            migration_dir=directory,
            migration_local_dir=local,
            migration_uri=_text(settings, "migration_uri", uri),
            migration_path_map=dict(path_map),
            page_references=page_references,
        )

    @classmethod
    def from_config(cls, config: LibvirtSettings, uri: str) -> StreamSettings:
        """The stream settings of the driver's parsed, validated settings."""
        return cls.from_settings(config.model_dump(), uri)

    def local_path(self, qemu_path: Path) -> Path:
        """Where this process finds the socket QEMU knows as ``qemu_path``.

        ``qemu_path`` comes from the destination's ticket, and the source replaces the file
        there with a socket anyone may connect to: it must be a socket name this plugin
        makes (``nc-<session>.sock``) directly in ``migration_dir``. Anything else (``..``,
        a subdirectory, another name) is a SecurityError; an absolute path in another
        directory is a ConfigError (the hosts' ``migration_dir`` differ).
        """
        text = str(qemu_path)
        if (
            not qemu_path.is_absolute()
            or ".." in qemu_path.parts
            or not SOCKET_NAME.fullmatch(qemu_path.name)
            or self.migration_dir in qemu_path.parent.parents  # a subdirectory
        ):
            msg = (
                f"the destination's ticket names the migration socket {text!r}, which is not "
                "a socket name this plugin makes (<migration_dir>/nc-<session>.sock); "
                "refusing to bind it (is the destination agent genuine and up to date?)"
            )
            raise SecurityError(msg)
        if qemu_path.parent != self.migration_dir:
            msg = (
                f"the destination's migration socket {qemu_path} is not in this host's "
                f"migration_dir {self.migration_dir}: set drivers.settings.libvirt."
                "migration_dir to the same directory on both hosts"
            )
            raise ConfigError(msg)
        return self.migration_local_dir / qemu_path.name


def _or_default(settings: Mapping[str, Any], key: str, default: Any) -> Any:
    value = settings.get(key)
    return default if value is None else value


def _text(settings: Mapping[str, Any], key: str, default: str) -> str:
    value = _or_default(settings, key, default)
    if not isinstance(value, str):
        msg = f"libvirt setting {key} must be a string, not {type(value).__name__}"
        raise ConfigError(msg)
    return value


async def offer(driver: LibvirtDriver, vm_id: str) -> StreamMigrationOffer:
    """The running domain ``vm_id`` and its migratable XML."""
    vm = await driver.get_vm(vm_id)
    xml = await driver.ex_domain_xml(vm.id, flags=_MIGRATABLE_XML)
    return StreamMigrationOffer(driver=driver.name, vm=vm, data={"xml": xml})


class LibvirtIncomingStream(IncomingStreamMigration):
    """A domain defined here for one incoming migration, and the sink feeding its QEMU."""

    def __init__(
        self,
        driver: LibvirtDriver,
        sink: StreamBridgeSink,
        ticket: StreamMigrationTicket,
        uuid: str,
    ) -> None:
        self.driver = driver
        self.sink = sink
        self.ticket = ticket
        self.uuid = uuid
        self._finished = False
        self._vm: VM | None = None

    async def finish(self, succeeded: bool) -> VM | None:
        """Close the sink; on failure undefine the domain unless it runs here."""
        if self._finished:
            return self._vm
        self._finished = True
        await self.sink.close()
        if succeeded:
            self._vm = await self.driver.get_vm(self.uuid)
            return self._vm
        await asyncio.to_thread(discard, self.driver.ex_connection, self.uuid)
        return None

    async def settled(self) -> bool:
        """True when no incoming QEMU runs for this domain (never started, or gone)."""
        try:
            domain = await self.driver.ex_domain(self.uuid)
            return not await asyncio.to_thread(domain.isActive)
        except NotFoundError:
            return True
        except libvirt.libvirtError as exc:
            if is_not_found(exc):  # undefined meanwhile
                return True
            raise translate(exc, f"check incoming domain {self.uuid}") from exc


def discard(conn: Any, uuid: str) -> bool:
    """Undefine the inactive domain ``uuid`` (defined for a migration that failed).

    A domain that runs is left alone: it may be the migrated guest after an ambiguous end,
    and it must never be killed on a guess. Returns whether the domain was undefined.
    """
    try:
        domain = conn.lookupByUUIDString(uuid)
        if domain.isActive():
            logger.warning("domain %s runs here after a failed migration; left alone", uuid)
            return False
        domains.undefine(domain)
    except libvirt.libvirtError as exc:
        if is_not_found(exc):
            return False
        raise translate(exc, f"undefine domain {uuid} after a failed migration") from exc
    return True


async def prepare(
    driver: LibvirtDriver,
    settings: StreamSettings,
    incoming: StreamMigrationOffer,
    *,
    transport: Transport,
    listen: Endpoint,
    session: str,
) -> LibvirtIncomingStream:
    """Define the incoming domain and start the sink; undo both if either fails."""
    if incoming.driver != driver.name:
        msg = f"cannot receive a {incoming.driver!r} VM on a {driver.name!r} host"
        raise MigrationError(msg)
    xml = rewrite_path_prefixes(str(incoming.data["xml"]), settings.migration_path_map)
    root = ET.fromstring(xml)  # noqa: S314 - XML produced by the source's libvirt daemon
    uuid, name = root.findtext("uuid") or "", root.findtext("name") or ""
    for key in (uuid, name):
        try:
            existing = await driver.get_vm(key)
        except NotFoundError:
            continue
        msg = (
            f"VM {existing.name} ({existing.id}) already exists on this host; "
            "destroy or undefine it before migrating it here"
        )
        raise InvalidStateError(msg)
    socket_name = f"nc-{session[:24]}.sock"
    if not SOCKET_NAME.fullmatch(socket_name):
        msg = (
            f"migration session {session!r} cannot name a migration socket: use letters, "
            "digits, '_' and '-' only"
        )
        raise MigrationError(msg)
    await driver.ex_define_xml(xml)
    try:
        local_dir = settings.migration_local_dir
        await asyncio.to_thread(local_dir.mkdir, mode=0o755, parents=True, exist_ok=True)
        references: list[Path] = []
        if settings.page_references and default_codec(transport) == CODEC_ZSTD:
            references = await asyncio.to_thread(boot_files, xml)
        sink = await open_sink(
            transport, local_dir / socket_name, session, listen, reference_files=references
        )
    except BaseException:
        await asyncio.to_thread(discard, driver.ex_connection, uuid)
        raise
    ticket = StreamMigrationTicket(
        endpoint=sink.endpoint,
        session=session,
        data={
            "libvirt_uri": settings.migration_uri,
            "socket": str(settings.migration_dir / socket_name),
            "xml": xml,
            "uuid": uuid,
            "defined": True,
            "reference_digests": sink.reference_digests,
        },
    )
    return LibvirtIncomingStream(driver, sink, ticket, uuid)


async def migrate(
    driver: LibvirtDriver,
    settings: StreamSettings,
    vm_id: str,
    ticket: StreamMigrationTicket,
    *,
    transport: Transport,
    migration: MigrationSettings,
    on_progress: ProgressCallback | None,
) -> StreamMigrationOutcome:
    """Migrate ``vm_id`` to the destination of ``ticket``, through ``transport``."""
    from novacron_libvirt.driver import LibvirtDriver

    qemu_socket = Path(str(ticket.data["socket"]))
    source_socket = settings.local_path(qemu_socket)
    uri = str(ticket.data["libvirt_uri"])
    destination = await asyncio.to_thread(LibvirtDriver, {"uri": uri, "events": False})
    try:
        try:
            result = await migrate_out(
                driver,
                destination,
                vm_id,
                transport=transport,
                endpoint=ticket.endpoint,
                session=ticket.session,
                qemu_socket=qemu_socket,
                source_socket=source_socket,
                settings=migration,
                destination_xml=str(ticket.data["xml"]),
                on_progress=on_progress,
                reference_digests=ticket_reference_digests(ticket)
                if settings.page_references
                else (),
            )
        except BaseException:
            if ticket.data.get("defined"):
                # The destination agent may be gone: clean its daemon from here as well.
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(
                        discard, destination.ex_connection, str(ticket.data["uuid"])
                    )
            raise
    finally:
        await destination.close()
    stats = result.qemu_stats
    page_size = int(stats.get("memory_page_size", 4096)) or 4096
    return StreamMigrationOutcome(
        vm=result.vm,
        total_s=result.total_s,
        downtime_ms=result.downtime_ms,
        connections=result.connections,
        memory_total=int(stats.get("memory_total", 0)),
        page_size=page_size,
        pages_sent=int(stats.get("memory_normal", 0)),
        bytes_on_wire=result.frame_bytes_to_destination + result.bytes_from_destination,
        postcopy_started=result.postcopy_started,
        stats={k: v for k, v in stats.items() if isinstance(v, int | float | str)},
    )


def ticket_reference_digests(ticket: StreamMigrationTicket) -> list[str]:
    """The sink's reference files named in its ticket; MigrationError if malformed."""
    digests = ticket.data.get("reference_digests", [])
    if not isinstance(digests, list) or not all(
        isinstance(d, str) and len(d) == 64 for d in digests
    ):
        msg = "the destination's ticket has malformed reference_digests (SHA-256 hex strings)"
        raise MigrationError(msg)
    return digests


__all__ = [
    "LibvirtIncomingStream",
    "StreamSettings",
    "discard",
    "migrate",
    "offer",
    "prepare",
    "ticket_reference_digests",
]
