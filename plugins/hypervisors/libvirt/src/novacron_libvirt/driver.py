"""The ``libvirt`` hypervisor driver: libvirt domains on any libvirt URI, as SDK VMs.

Every libvirt call blocks, so each runs in a worker thread (``asyncio.to_thread``); the
connection is thread-safe. Domain lifecycle events arrive on libvirt's event thread and are
handed to the sink's event loop.

Settings (``drivers.settings.libvirt``; :mod:`novacron_libvirt.settings` checks them and an
unknown key is a ConfigError naming the closest known one):

- ``uri`` (default ``qemu:///system``): any libvirt URI (``qemu+ssh://host/system``,
  ``qemu:///session?socket=/path``, ``test:///default``...).
- ``domain_type``: ``kvm``, ``qemu``, ``test``...; default: ``kvm`` when the host offers it,
  else the first type the host offers.
- ``shutdown_timeout_s`` (default 30): how long ``stop`` waits for the guest to power off
  before it forces the domain off (0 = force at once).
- ``events`` (default true): subscribe to libvirt's domain lifecycle events.

Stream migration between agents (QEMU connections only; see ``agent_migration``):

- ``migration_dir`` (default ``/run/novacron-libvirt``): where QEMU finds the migration
  unix sockets; the same path on every host.
- ``migration_local_dir`` (default: ``migration_dir``): that directory as the agent sees it.
- ``migration_uri`` (default: ``uri``): the libvirt URI other hosts reach this daemon at
  (``qemu+ssh://host/system``, ``qemu+tls://host/system``...).
- ``migration_path_map`` (default none): ``{source directory: directory here}`` for
  host-local paths (serial sockets, logs) in an incoming domain's XML.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

import libvirt

from novacron_libvirt import catalogue, convert, domains
from novacron_libvirt.errors import is_not_found, translate
from novacron_libvirt.events import ensure_event_loop, lifecycle_event
from novacron_libvirt.settings import LibvirtSettings
from novacron_libvirt.stream_driver import StreamMigrationMixin
from novacron_sdk.errors import DriverError, InvalidStateError, NotFoundError
from novacron_sdk.hypervisors.interface import HypervisorDriver
from novacron_sdk.models import (
    VM,
    DriverFeature,
    Host,
    Image,
    Location,
    Page,
    Size,
    VMEvent,
    VMSpec,
    VMState,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")
EventSink = Callable[[VMEvent], None]
_POLL_S = 0.1
_BASE_FEATURES = frozenset(
    {
        DriverFeature.CREATE,
        DriverFeature.START_STOP,
        DriverFeature.REBOOT,
        DriverFeature.DESTROY,
        DriverFeature.PAUSE,
        DriverFeature.SIZES,
        DriverFeature.LOCATIONS,
        DriverFeature.HOSTS,
        DriverFeature.TAGS,
    }
)


def _silence_default_error_printer(_context: object, _error: object) -> None:
    """libvirt prints every error to stderr by default; the driver raises them instead."""


libvirt.registerErrorHandler(_silence_default_error_printer, None)


class LibvirtDriver(StreamMigrationMixin, HypervisorDriver):
    """Domains of one libvirt connection. ``features`` depend on what the connection offers."""

    name: ClassVar[str] = "libvirt"
    description: ClassVar[str] = "libvirt domains on any libvirt URI (QEMU/KVM, test, ...)"

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        # Before anything else: a typo in a key is an error naming the key it resembles.
        self.config = LibvirtSettings.parse(self.settings)
        self.uri = self.config.uri
        self.shutdown_timeout_s = self.config.shutdown_timeout_s
        want_events = self.config.events
        if want_events:
            ensure_event_loop()  # before open(): libvirt binds events at connect time
        try:
            self._conn: Any = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            msg = (
                f"cannot open libvirt connection {self.uri!r}: {exc.get_error_message()} "
                "(check the URI and that the libvirt daemon runs and lets you in)"
            )
            raise DriverError(msg) from exc
        self._facts = catalogue.host_facts(self._conn, self.uri)
        caps = self._conn.getCapabilities()
        self._arch = convert.host_arch(caps)
        offered = convert.guest_domain_types(caps, self._arch)
        default_type = "kvm" if "kvm" in offered else (offered[0] if offered else "qemu")
        self.domain_type = self.config.domain_type or default_type
        self._sinks: list[tuple[EventSink, asyncio.AbstractEventLoop | None]] = []
        self._event_callback: int | None = None
        features = set(_BASE_FEATURES)
        if catalogue.supports_storage(self._conn):
            features.add(DriverFeature.IMAGES)
        if want_events and self._subscribe_events():
            features.add(DriverFeature.EVENTS)
        if self._conn.getType() == "QEMU":
            features |= {DriverFeature.STREAM_MIGRATION_SOURCE, DriverFeature.STREAM_MIGRATION_SINK}
        # The base class declares features per class; libvirt's depend on the connection,
        # so each instance shadows the class attribute with its own set.
        vars(self)["features"] = frozenset(features)

    # -- plumbing ----------------------------------------------------------------------------
    async def _call(self, action: str, function: Callable[..., T], *args: Any) -> T:
        """Run a blocking libvirt call in a worker thread, translating libvirt's errors."""
        try:
            return await asyncio.to_thread(function, *args)
        except libvirt.libvirtError as exc:
            raise translate(exc, action) from exc

    def _lookup(self, vm_id: str) -> Any:
        return domains.lookup(self._conn, vm_id, self.uri)

    def _to_vm(self, domain: Any) -> VM:
        return domains.to_vm(domain, driver=self.name, host=self._facts["uuid"], uri=self.uri)

    def _vm_of(self, vm_id: str) -> VM:
        return self._to_vm(self._lookup(vm_id))

    async def _get(self, action: str, vm_id: str) -> VM:
        return await self._call(action, self._vm_of, vm_id)

    # -- events ------------------------------------------------------------------------------
    def _subscribe_events(self) -> bool:
        try:
            self._event_callback = self._conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None
            )
        except libvirt.libvirtError:
            logger.info("libvirt connection %s offers no domain events", self.uri)
            return False
        return True

    def _on_lifecycle(self, _conn: Any, domain: Any, event: int, detail: int, _opaque: Any) -> None:
        vm_event = lifecycle_event(self.name, domain.UUIDString(), event, detail)
        for sink, loop in list(self._sinks):
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._deliver, sink, vm_event)
            elif loop is None:
                self._deliver(sink, vm_event)

    @staticmethod
    def _deliver(sink: EventSink, event: VMEvent) -> None:
        try:
            sink(event)
        except Exception:
            # A broken listener must not stop the others or libvirt's event thread.
            logger.exception("libvirt event sink failed on %s", event)

    def set_event_sink(self, callback: EventSink | None) -> None:
        """Call ``callback`` with a VMEvent for every domain lifecycle event (None to stop).

        Called from an event loop, the callback runs on that loop; otherwise on libvirt's
        event thread. Requires ``DriverFeature.EVENTS``.
        """
        if callback is None:
            self._sinks.clear()
            return
        self.require(DriverFeature.EVENTS)
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        self._sinks.append((callback, loop))

    # -- VMs ---------------------------------------------------------------------------------
    async def _list_vms_page(self, token: str | None, page_size: int) -> Page[VM]:
        def page() -> Page[VM]:
            domains = sorted(self._conn.listAllDomains(0), key=lambda d: d.UUIDString())
            after = [d for d in domains if token is None or d.UUIDString() > token]
            items: list[VM] = []
            for domain in after[:page_size]:
                try:
                    items.append(self._to_vm(domain))
                except libvirt.libvirtError as exc:
                    if not is_not_found(exc):  # undefined while we listed: skip it
                        raise
            more = len(after) > page_size
            return Page(
                items=tuple(items), next_token=after[page_size - 1].UUIDString() if more else None
            )

        return await self._call(f"list domains on {self.uri}", page)

    async def get_vm(self, vm_id: str) -> VM:
        """The domain with UUID or name ``vm_id``."""
        return await self._get(f"get domain {vm_id!r}", vm_id)

    async def create_vm(self, spec: VMSpec) -> VM:
        """Define a persistent domain from ``spec`` and start it."""
        spec = await self._apply_size(spec)
        self._check_location(spec)
        disk_path: str | None = None
        disk_format = "raw"
        if spec.image is not None:
            image = catalogue.find_image(await self.list_images(), spec.image)
            if image is None:
                msg = f"image {spec.image!r}: no storage volume with that key, name or path"
                raise NotFoundError(msg, code="VIR_ERR_NO_STORAGE_VOL")
            disk_path, disk_format = str(image.extra["path"]), str(image.extra["format"])
        xml = convert.domain_xml(
            spec,
            domain_type=self.domain_type,
            arch=self._arch,
            disk_path=disk_path,
            disk_format=disk_format,
        )
        name, uuid = convert.domain_identity(xml)
        # defineXML would overwrite the definition of a domain with this name and UUID (and a
        # failed start would then undefine it): refuse, as an incoming migration does.
        existing = await self._call(
            f"look up domain {name!r}", domains.find_existing, self._conn, name, uuid
        )
        if existing is not None:
            msg = (
                f"cannot create VM {name!r}: domain {existing[0]!r} ({existing[1]}) already "
                f"exists on {self.uri}; destroy it first, or choose another name "
                "(and, with spec.extra['domain_xml'], another <uuid> or none)"
            )
            raise InvalidStateError(msg, code="VIR_ERR_OPERATION_INVALID")
        domain = await self._call(f"define domain {spec.name!r}", self._conn.defineXML, xml)
        try:
            await self._call(f"start domain {spec.name!r}", domain.create)
        except DriverError:
            # This call defined the domain (it did not exist before): undo that.
            await self._call(f"undefine domain {spec.name!r}", domains.undefine, domain)
            raise
        return await self._call(f"get domain {spec.name!r}", self._to_vm, domain)

    async def _apply_size(self, spec: VMSpec) -> VMSpec:
        if spec.size is None:
            return spec
        sizes = {size.id: size for size in await self.list_sizes()}
        size = sizes.get(spec.size)
        if size is None:
            msg = f"size {spec.size!r} does not exist here (sizes: {', '.join(sizes)})"
            raise NotFoundError(msg)
        return spec.model_copy(update={"vcpus": size.vcpus, "memory_mib": size.memory_mib})

    def _check_location(self, spec: VMSpec) -> None:
        if spec.location not in (None, self._facts["uuid"], self._facts["hostname"]):
            msg = (
                f"location {spec.location!r} is not this connection's host "
                f"({self._facts['uuid']}, {self._facts['hostname']})"
            )
            raise NotFoundError(msg)

    async def _domain_in(self, vm_id: str, action: str, allowed: set[VMState]) -> Any:
        """The domain, after checking that ``action`` is allowed in its state.

        Drivers disagree on the error code for a wrong state (the test driver says
        "internal error"), so the check is made here and always raises InvalidStateError.
        """

        def check() -> Any:
            domain = self._lookup(vm_id)
            state = convert.vm_state(*domain.state(0))
            if state not in allowed:
                wanted = " or ".join(sorted(allowed))
                msg = f"cannot {action} domain {vm_id!r}: it is {state}, not {wanted}"
                raise InvalidStateError(msg, code="VIR_ERR_OPERATION_INVALID")
            return domain

        return await self._call(f"find domain {vm_id!r}", check)

    async def start(self, vm_id: str) -> VM:
        """Start a defined, shut-off domain."""
        domain = await self._domain_in(vm_id, "start", {VMState.STOPPED, VMState.ERROR})
        await self._call(f"start domain {vm_id!r}", domain.create)
        return await self._get(f"get domain {vm_id!r}", vm_id)

    async def stop(self, vm_id: str) -> VM:
        """Ask the guest to power off; force it off after ``shutdown_timeout_s``.

        A domain that is not running or paused is an InvalidStateError (libvirt's test driver
        calls that an internal error).
        """
        domain = await self._domain_in(vm_id, "stop", {VMState.RUNNING, VMState.PAUSED})
        if self.shutdown_timeout_s > 0:
            await self._call(f"shut down domain {vm_id!r}", domain.shutdown)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.shutdown_timeout_s
            while loop.time() < deadline:
                if not await self._call(f"poll domain {vm_id!r}", domain.isActive):
                    return await self._get(f"get domain {vm_id!r}", vm_id)
                await asyncio.sleep(_POLL_S)
        await self._call(f"force off domain {vm_id!r}", domain.destroy)
        return await self._get(f"get domain {vm_id!r}", vm_id)

    async def reboot(self, vm_id: str) -> VM:
        """Ask the guest to reboot (ACPI or guest agent, as libvirt chooses)."""
        domain = await self._call(f"find domain {vm_id!r}", self._lookup, vm_id)
        await self._call(f"reboot domain {vm_id!r}", domain.reboot, 0)
        return await self._get(f"get domain {vm_id!r}", vm_id)

    async def destroy(self, vm_id: str) -> None:
        """Force the domain off (if running) and undefine it with its managed save image."""
        domain = await self._call(f"find domain {vm_id!r}", self._lookup, vm_id)

        await self._call(f"destroy domain {vm_id!r}", domains.destroy_and_undefine, domain)

    async def pause(self, vm_id: str) -> VM:
        """Suspend the domain's vCPUs (memory stays resident)."""
        domain = await self._domain_in(vm_id, "pause", {VMState.RUNNING})
        await self._call(f"suspend domain {vm_id!r}", domain.suspend)
        return await self._get(f"get domain {vm_id!r}", vm_id)

    async def resume(self, vm_id: str) -> VM:
        """Resume a suspended domain."""
        domain = await self._domain_in(vm_id, "resume", {VMState.PAUSED})
        await self._call(f"resume domain {vm_id!r}", domain.resume)
        return await self._get(f"get domain {vm_id!r}", vm_id)

    # -- libvirt-only extras -----------------------------------------------------------------
    async def ex_define_xml(self, xml: str) -> VM:
        """Define (but do not start) a persistent domain from raw domain XML."""
        domain = await self._call("define domain from XML", self._conn.defineXML, xml)
        return await self._call("get defined domain", self._to_vm, domain)

    async def ex_undefine(self, vm_id: str) -> None:
        """Remove a shut-off domain's definition (a running one stays, as transient)."""
        domain = await self._call(f"find domain {vm_id!r}", self._lookup, vm_id)
        await self._call(f"undefine domain {vm_id!r}", domains.undefine, domain)

    async def ex_domain_xml(self, vm_id: str, *, flags: int = 0) -> str:
        """The domain's XML description."""
        domain = await self._call(f"find domain {vm_id!r}", self._lookup, vm_id)
        return await self._call(f"describe domain {vm_id!r}", domain.XMLDesc, flags)

    async def ex_save(self, vm_id: str, path: str) -> VM:
        """Save the running domain's memory and device state to ``path``; it stops."""
        domain = await self._call(f"find domain {vm_id!r}", self._lookup, vm_id)
        await self._call(f"save domain {vm_id!r} to {path}", domain.save, path)
        return await self._get(f"get domain {vm_id!r}", vm_id)

    async def ex_restore(self, path: str) -> VM:
        """Restore a domain saved with ``ex_save``; it runs again."""
        domain = await self._call(f"restore domain from {path}", domains.restore, self._conn, path)
        return await self._call(f"get domain restored from {path}", self._to_vm, domain)

    async def ex_domain(self, vm_id: str) -> Any:
        """The ``libvirt.virDomain`` with UUID or name ``vm_id``."""
        return await self._call(f"find domain {vm_id!r}", self._lookup, vm_id)

    async def ex_vm_from_domain(self, domain: Any) -> VM:
        """The VM for a ``libvirt.virDomain`` of this connection."""
        return await self._call(f"describe domain {domain.name()!r}", self._to_vm, domain)

    @property
    def ex_connection(self) -> Any:
        """The underlying ``libvirt.virConnect`` (for what the SDK does not wrap)."""
        return self._conn

    # -- catalogue and hosts -----------------------------------------------------------------
    async def list_images(self) -> list[Image]:
        """Every storage volume of every active pool."""
        self.require(DriverFeature.IMAGES)
        return await self._call(
            f"list volumes on {self.uri}", catalogue.list_volume_images, self._conn, self.name
        )

    async def list_sizes(self) -> list[Size]:
        """Standard sizes that fit the host (libvirt has no instance types of its own)."""
        return catalogue.size_models(self._facts, self.name)

    async def list_locations(self) -> list[Location]:
        """The connection's host, as the one location."""
        return [catalogue.location_model(self._facts, self.name)]

    async def list_hosts(self) -> list[Host]:
        """The connection's host with its capacity."""
        facts = await self._call(
            f"read host of {self.uri}", catalogue.host_facts, self._conn, self.uri
        )
        return [catalogue.host_model(facts, self.name)]

    async def close(self) -> None:
        """Unsubscribe from events and close the connection. Safe to call twice."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        self._sinks.clear()
        try:
            if self._event_callback is not None:
                await asyncio.to_thread(conn.domainEventDeregisterAny, self._event_callback)
            await asyncio.to_thread(conn.close)
        except libvirt.libvirtError as exc:
            raise translate(exc, f"close connection {self.uri}") from exc


__all__ = ["LibvirtDriver", "VMState"]
