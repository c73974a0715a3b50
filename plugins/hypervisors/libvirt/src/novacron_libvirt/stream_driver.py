"""The libvirt driver's stream-migration methods (the compute contract's three), as a mixin.

They are thin: the work is in :mod:`novacron_libvirt.agent_migration`, imported when a
migration starts (it imports the driver module, which imports this one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from novacron_sdk.compute.interface import (
    ComputeDriver,
    IncomingStreamMigration,
    ProgressCallback,
    StreamMigrationOffer,
    StreamMigrationOutcome,
    StreamMigrationTicket,
)
from novacron_sdk.models import DriverFeature

if TYPE_CHECKING:
    from novacron_libvirt.agent_migration import StreamSettings
    from novacron_libvirt.driver import LibvirtDriver
    from novacron_sdk.migration.models import MigrationSettings
    from novacron_sdk.transport.interface import Endpoint, Transport


class StreamMigrationMixin(ComputeDriver):
    """Offer, prepare and migrate-out for :class:`~novacron_libvirt.driver.LibvirtDriver`."""

    uri: str

    def _stream_settings(self) -> StreamSettings:
        from novacron_libvirt.agent_migration import StreamSettings

        # From the settings the driver parsed and validated (LibvirtSettings), not the raw
        # mapping: None there means the default.
        return StreamSettings.from_config(self._libvirt().config, self.uri)

    def _libvirt(self) -> LibvirtDriver:
        # The mixin is only ever a base of LibvirtDriver.
        return cast("LibvirtDriver", self)

    async def stream_migration_offer(self, vm_id: str) -> StreamMigrationOffer:
        """The domain and its migratable XML, for the destination."""
        self.require(DriverFeature.STREAM_MIGRATION_SOURCE)
        from novacron_libvirt import agent_migration

        return await agent_migration.offer(self._libvirt(), vm_id)

    async def prepare_stream_migration(
        self,
        offer: StreamMigrationOffer,
        *,
        transport: Transport,
        listen: Endpoint,
        session: str,
    ) -> IncomingStreamMigration:
        """Define the incoming domain and start the sink feeding its QEMU."""
        self.require(DriverFeature.STREAM_MIGRATION_SINK)
        from novacron_libvirt import agent_migration

        return await agent_migration.prepare(
            self._libvirt(),
            self._stream_settings(),
            offer,
            transport=transport,
            listen=listen,
            session=session,
        )

    async def migrate_stream_out(
        self,
        vm_id: str,
        ticket: StreamMigrationTicket,
        *,
        transport: Transport,
        settings: MigrationSettings,
        on_progress: ProgressCallback | None = None,
    ) -> StreamMigrationOutcome:
        """Live-migrate ``vm_id`` with ``virDomainMigrate3`` to the ticket's destination."""
        self.require(DriverFeature.STREAM_MIGRATION_SOURCE)
        from novacron_libvirt import agent_migration

        return await agent_migration.migrate(
            self._libvirt(),
            self._stream_settings(),
            vm_id,
            ticket,
            transport=transport,
            migration=settings,
            on_progress=on_progress,
        )
