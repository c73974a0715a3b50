"""Migrate between two drivers inside one process, over a real transport on loopback.

For embedding (a tool that holds both hypervisor connections) and for tests of the engine:
the same engine, receiver and protocol as between agents, without the HTTP control plane.
"""

from __future__ import annotations

import asyncio
import contextlib

from novacron_sdk.errors import MigrationError
from novacron_sdk.hypervisors.interface import HypervisorDriver
from novacron_sdk.migration import protocol
from novacron_sdk.migration.engine import DestinationCheck, EventCallback, MigrationEngine
from novacron_sdk.migration.models import MigrationReport, MigrationSettings
from novacron_sdk.migration.planner import MigrationPlan, plan_migration
from novacron_sdk.migration.protocol import Msg
from novacron_sdk.migration.receiver import MigrationReceiver
from novacron_sdk.plugin.manager import NovaCronPluginManager
from novacron_sdk.transport.interface import Channel, Endpoint


async def migrate_between(
    source_driver: HypervisorDriver,
    destination_driver: HypervisorDriver,
    vm_id: str,
    *,
    plugins: NovaCronPluginManager,
    settings: MigrationSettings | None = None,
    plan: MigrationPlan | None = None,
    on_event: EventCallback | None = None,
    host: str = "127.0.0.1",
    check_destination: DestinationCheck | None = None,
) -> MigrationReport:
    """Live-migrate ``vm_id`` from one driver to the other; returns the report.

    Raises MigrationError after rolling back (the VM keeps running at the source).
    ``check_destination`` answers whether the destination runs the VM when the hand-over's
    answers are lost; by default the receiver's own state, which this process knows.
    """
    settings = settings or MigrationSettings()
    plan = plan or plan_migration(plugins, settings, Endpoint(host=host))
    vm = await source_driver.get_vm(vm_id)
    source = await source_driver.open_migration_source(vm.id)
    try:
        info = source.info()
        sink = await destination_driver.open_migration_sink(info)
    except BaseException:
        await source.rollback()
        raise
    receiver = MigrationReceiver(
        sink, info, plan.codec.new_decoder(info.page_size), verify=settings.verify
    )
    served: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def serve(channel: Channel) -> None:
        try:
            await protocol.expect_json(channel, Msg.HELLO)
            await receiver.run(channel)
        finally:
            await channel.close()
            if not served.done():
                served.set_result(None)

    try:
        listener = await plan.transport.listen(Endpoint(host=host), serve)
    except BaseException:
        await source.rollback()
        await sink.abort()
        raise
    try:
        endpoint = listener.endpoint
        if plan.streams:
            endpoint = endpoint.model_copy(update={"options": {"streams": str(plan.streams)}})
        try:
            channel = await plan.transport.connect(endpoint)
        except BaseException:
            await source.rollback()
            await sink.abort()
            raise
        engine = MigrationEngine(
            plugins=plugins,
            settings=settings,
            plan=plan,
            vm=vm.name,
            source_name=source_driver.name,
            destination_name=destination_driver.name,
            on_event=on_event,
        )
        try:
            return await engine.run(
                source, channel, check_destination=check_destination or _runs(receiver)
            )
        finally:
            await channel.close()
            await _wind_up(receiver, served)
    finally:
        await listener.close()


async def _wind_up(receiver: MigrationReceiver, served: asyncio.Future[None]) -> None:
    """Give the receiver up to 10 s to finish; discard what it holds if it has not resumed."""
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(served), 10)
    finally:  # also when the caller cancels the wait
        if receiver.state == "pending":
            receiver.state = "aborted"  # its own abort, if it wakes, has nothing to do
            await receiver.sink.abort()


def _runs(receiver: MigrationReceiver) -> DestinationCheck:
    """Whether the receiver runs the VM: known in this process (None while it is pending)."""

    async def check() -> bool | None:
        return {"active": True, "aborted": False}.get(receiver.state)

    return check


__all__ = ["MigrationError", "migrate_between"]
