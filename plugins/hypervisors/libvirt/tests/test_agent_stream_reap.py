"""A destination agent discards a prepared stream migration whose source vanished.

The agent's reaper (``novacron_sdk.agent.stream.reap``) runs on the real libvirt handle
that ``prepare`` returns: the domain defined on the destination daemon for the incoming
guest, and the bridge sink waiting for its stream. The source never connects (as when the
source agent dies before QEMU starts sending); once the prepared migration is older than the
limit and no QEMU runs for it, it is aborted and the domain undefined. The guest never left
the source and keeps running there.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

pytest.importorskip("libvirt", reason="libvirt-python is not installed (needs libvirt-dev)")

from novacron_libvirt import agent_migration
from novacron_libvirt.agent_migration import StreamSettings
from novacron_libvirt.driver import LibvirtDriver
from novacron_libvirt.testing.agents import agent_settings
from novacron_libvirt.testing.lab import BootedGuest, Lab, fresh_guest
from novacron_sdk.agent import stream
from novacron_sdk.builtin.tcp_transport import TcpTransport
from novacron_sdk.models import VMState
from novacron_sdk.transport.interface import Endpoint

pytestmark = pytest.mark.slow


@pytest.fixture
async def guest(lab: Lab) -> AsyncIterator[BootedGuest]:
    """A freshly booted guest on the source daemon."""
    async with fresh_guest(lab, "reap") as booted:
        yield booted


def destination_settings(lab: Lab) -> StreamSettings:
    """The destination agent's stream settings, as the lab's agents get them."""
    item = next(i for i in agent_settings(lab, "destination") if i.startswith("drivers.settings="))
    settings = json.loads(item.removeprefix("drivers.settings="))["libvirt"]
    return StreamSettings.from_settings(settings, lab.destination.uri)


async def test_prepared_migration_of_a_vanished_source_is_discarded(
    lab: Lab,
    guest: BootedGuest,
    source_driver: LibvirtDriver,
    destination_driver: LibvirtDriver,
) -> None:
    offer = await agent_migration.offer(source_driver, guest.vm.id)
    handle = await agent_migration.prepare(
        destination_driver,
        destination_settings(lab),
        offer,
        transport=TcpTransport(),
        listen=Endpoint(host="127.0.0.1"),
        session="reap-test-session",
    )
    incoming = stream.IncomingStream(id="m-reap", token="t", transport="tcp", handle=handle)
    streams = {incoming.id: incoming}
    try:
        assert guest.vm.name in {vm.name for vm in await destination_driver.list_vms()}

        await stream.reap(streams, max_age_s=60)  # younger than the limit: left alone
        assert incoming.state == "pending"
        assert guest.vm.name in {vm.name for vm in await destination_driver.list_vms()}

        incoming.created -= 120  # as if the source had been gone for two minutes
        await stream.reap(streams, max_age_s=60)
        assert incoming.state == "aborted"
        assert incoming.error == "the source never finished the migration"
        assert guest.vm.name not in {vm.name for vm in await destination_driver.list_vms()}
        assert (await source_driver.get_vm(guest.vm.id)).state == VMState.RUNNING
    finally:
        # When the test failed before the reaper did it: close the sink (its listening socket
        # would leak into the next test) and undefine the domain. A second finish is a no-op.
        await handle.finish(False)
