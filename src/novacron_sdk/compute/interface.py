"""The compute driver contract: what every hypervisor and cloud driver implements.

Drivers are async. Listings are paginated by the driver (``_list_vms_page``) and iterated to
the end by the base class, so no caller ever sees a truncated list. A driver advertises what
it supports in ``features``; an operation outside ``features`` raises
:class:`~novacron_sdk.errors.FeatureNotSupportedError` rather than silently doing nothing.
Provider-only extras are methods prefixed ``ex_``.

Drivers whose hypervisor moves a VM with its own migration stream (QEMU under libvirt)
advertise ``STREAM_MIGRATION_SOURCE`` / ``STREAM_MIGRATION_SINK`` and implement the three
stream-migration methods; the agent calls them, in this order: ``stream_migration_offer`` at
the source, ``prepare_stream_migration`` at the destination (whose ticket goes back to the
source), ``migrate_stream_out`` at the source, then ``IncomingStreamMigration.finish`` at the
destination. The stream itself is carried by the transport the agent hands in.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from novacron_sdk.errors import FeatureNotSupportedError, NotFoundError
from novacron_sdk.migration.models import MigrationSettings
from novacron_sdk.models import VM, DriverFeature, Image, Location, Page, Size, VMSpec
from novacron_sdk.transport.interface import Endpoint, Transport

DEFAULT_PAGE_SIZE = 100


class StreamMigrationOffer(BaseModel):
    """What the source driver tells the destination so that it can prepare to receive."""

    model_config = ConfigDict(extra="forbid")

    driver: str = Field(description="Driver name; the destination must run the same driver.")
    vm: VM
    data: dict[str, Any] = Field(
        default_factory=dict, description="Driver-specific (libvirt: the migratable XML)."
    )


class StreamMigrationTicket(BaseModel):
    """The destination's answer: where the source sends the stream, and what else it needs."""

    model_config = ConfigDict(extra="forbid")

    endpoint: Endpoint = Field(description="Transport endpoint of the destination's sink.")
    session: str = Field(min_length=1, description="Ties the stream's connections together.")
    data: dict[str, Any] = Field(
        default_factory=dict, description="Driver-specific (libvirt: URI, socket, XML)."
    )


class StreamMigrationProgress(BaseModel):
    """A snapshot of a running stream migration, from the hypervisor's job statistics."""

    model_config = ConfigDict(extra="forbid")

    iteration: int = 0
    memory_total: int = 0
    memory_processed: int = 0
    memory_remaining: int = 0
    page_size: int = 4096
    bytes_on_wire: int = 0
    data: dict[str, Any] = Field(default_factory=dict)


class StreamMigrationOutcome(BaseModel):
    """What a completed stream migration did."""

    model_config = ConfigDict(extra="forbid")

    vm: VM = Field(description="The VM as the destination runs it.")
    total_s: float
    downtime_ms: float | None = None
    connections: int = 0
    memory_total: int = 0
    page_size: int = 4096
    pages_sent: int = 0
    bytes_on_wire: int = 0
    postcopy_started: bool = False
    stats: dict[str, Any] = Field(default_factory=dict)


ProgressCallback = Callable[[StreamMigrationProgress], None]


class IncomingStreamMigration(ABC):
    """The destination's half of a stream migration, from prepare until ``finish``."""

    ticket: StreamMigrationTicket

    @abstractmethod
    async def finish(self, succeeded: bool) -> VM | None:
        """Stop receiving. On failure discard what was prepared (the VM never runs here).

        Returns the VM as it runs here after a success. Safe to call twice.
        """

    @abstractmethod
    async def settled(self) -> bool:
        """Whether nothing is arriving any more (for reaping migrations never finished)."""


class ComputeDriver(ABC):
    """Base class for every compute driver.

    Subclasses set ``name`` and ``features`` and implement the abstract methods. The
    constructor takes the driver's settings from the config section ``drivers.<name>``.
    """

    name: ClassVar[str] = ""
    features: ClassVar[frozenset[DriverFeature]] = frozenset()
    description: ClassVar[str] = ""

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self.settings: dict[str, Any] = dict(settings or {})

    def require(self, feature: DriverFeature) -> None:
        """Raise :class:`FeatureNotSupportedError` unless ``feature`` is advertised."""
        if feature not in self.features:
            have = ", ".join(sorted(self.features)) or "none"
            msg = f"driver {self.name!r} does not support {feature.value!r} (it supports: {have})"
            raise FeatureNotSupportedError(msg)

    # -- VMs -----------------------------------------------------------------------------
    @abstractmethod
    async def _list_vms_page(self, token: str | None, page_size: int) -> Page[VM]:
        """Return one page of VMs starting at ``token`` (None for the first page)."""

    async def iter_vms(self, *, page_size: int = DEFAULT_PAGE_SIZE) -> AsyncIterator[VM]:
        """Yield every VM, fetching page after page until the provider says there is no more."""
        token: str | None = None
        seen_tokens: set[str] = set()
        while True:
            page = await self._list_vms_page(token, page_size)
            for vm in page.items:
                yield vm
            if page.next_token is None:
                return
            if page.next_token in seen_tokens:
                msg = f"driver {self.name!r} returned the page token {page.next_token!r} twice"
                raise RuntimeError(msg)
            seen_tokens.add(page.next_token)
            token = page.next_token

    async def list_vms(self, *, page_size: int = DEFAULT_PAGE_SIZE) -> list[VM]:
        """Every VM the driver can see, across all pages."""
        return [vm async for vm in self.iter_vms(page_size=page_size)]

    async def get_vm(self, vm_id: str) -> VM:
        """The VM with id (or unique name) ``vm_id``; raises NotFoundError if there is none.

        Drivers with a direct lookup override this; the default scans the listing.
        """
        async for vm in self.iter_vms():
            if vm_id in (vm.id, vm.name):
                return vm
        msg = f"no VM {vm_id!r} on driver {self.name!r}"
        raise NotFoundError(msg)

    @abstractmethod
    async def create_vm(self, spec: VMSpec) -> VM:
        """Create (and start) a VM from ``spec``."""

    @abstractmethod
    async def start(self, vm_id: str) -> VM:
        """Start a stopped VM."""

    @abstractmethod
    async def stop(self, vm_id: str) -> VM:
        """Stop a running VM (graceful where the provider allows)."""

    @abstractmethod
    async def reboot(self, vm_id: str) -> VM:
        """Reboot a running VM."""

    @abstractmethod
    async def destroy(self, vm_id: str) -> None:
        """Destroy a VM and release its resources. Destroying a missing VM raises NotFoundError."""

    # -- catalogue -------------------------------------------------------------------------
    async def list_images(self) -> list[Image]:
        """Images the driver can boot. Requires ``DriverFeature.IMAGES``."""
        self.require(DriverFeature.IMAGES)
        return []  # pragma: no cover - a driver advertising IMAGES overrides this

    async def list_sizes(self) -> list[Size]:
        """Sizes (instance types). Requires ``DriverFeature.SIZES``."""
        self.require(DriverFeature.SIZES)
        return []  # pragma: no cover - a driver advertising SIZES overrides this

    async def list_locations(self) -> list[Location]:
        """Locations (regions, zones, hosts). Requires ``DriverFeature.LOCATIONS``."""
        self.require(DriverFeature.LOCATIONS)
        return []  # pragma: no cover - a driver advertising LOCATIONS overrides this

    # -- stream migration (hypervisor-native stream) -------------------------------------------
    async def stream_migration_offer(self, vm_id: str) -> StreamMigrationOffer:
        """Describe ``vm_id`` for the destination. Requires ``STREAM_MIGRATION_SOURCE``."""
        self.require(DriverFeature.STREAM_MIGRATION_SOURCE)
        raise NotImplementedError  # pragma: no cover - advertised drivers override

    async def prepare_stream_migration(
        self,
        offer: StreamMigrationOffer,
        *,
        transport: Transport,
        listen: Endpoint,
        session: str,
    ) -> IncomingStreamMigration:
        """Prepare to receive ``offer``'s VM; its stream arrives through ``transport``.

        Raises when the VM cannot run here (then nothing is left behind). Requires
        ``STREAM_MIGRATION_SINK``.
        """
        self.require(DriverFeature.STREAM_MIGRATION_SINK)
        raise NotImplementedError  # pragma: no cover - advertised drivers override

    async def migrate_stream_out(
        self,
        vm_id: str,
        ticket: StreamMigrationTicket,
        *,
        transport: Transport,
        settings: MigrationSettings,
        on_progress: ProgressCallback | None = None,
    ) -> StreamMigrationOutcome:
        """Live-migrate ``vm_id`` to the destination that issued ``ticket``.

        On any failure before switch-over the VM runs on here and MigrationError is raised.
        Requires ``STREAM_MIGRATION_SOURCE``.
        """
        self.require(DriverFeature.STREAM_MIGRATION_SOURCE)
        raise NotImplementedError  # pragma: no cover - advertised drivers override

    async def close(self) -> None:  # noqa: B027 - optional hook, most drivers hold nothing
        """Release connections. Safe to call twice."""
