"""The pieces of agent-to-agent stream migration that need no QEMU: settings, XML, features."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("libvirt", reason="libvirt-python is not installed (needs libvirt-dev)")

from novacron_libvirt.agent_migration import StreamSettings, ticket_reference_digests
from novacron_libvirt.driver import LibvirtDriver
from novacron_libvirt.migration import rewrite_path_prefixes
from novacron_sdk.builtin.tcp_transport import TcpTransport
from novacron_sdk.compute.interface import StreamMigrationOffer, StreamMigrationTicket
from novacron_sdk.errors import ConfigError, FeatureNotSupportedError, MigrationError
from novacron_sdk.migration.models import MigrationSettings
from novacron_sdk.models import DriverFeature
from novacron_sdk.transport.interface import Endpoint

XML = """<domain type='qemu'><name>g</name>
<devices><serial type='unix'><source mode='bind' path='/srv/a/serial/g.sock'/></serial>
<console><source path='/srv/ab/g.log'/></console><kernel>/srv/a</kernel></devices></domain>"""


def test_path_prefixes_move_whole_components_only() -> None:
    moved = rewrite_path_prefixes(XML, {"/srv/a/": "/srv/b", "/srv/a/serial": "/run/s"})
    assert 'path="/run/s/g.sock"' in moved  # the longest prefix wins
    assert "/srv/ab/g.log" in moved  # /srv/ab is not under /srv/a
    assert "<kernel>/srv/b</kernel>" in moved  # the directory itself moves too
    assert rewrite_path_prefixes(XML, {}) == XML


def test_stream_settings_defaults_and_checks() -> None:
    settings = StreamSettings.from_settings({"uri": "qemu:///system"}, "qemu:///system")
    assert settings.migration_uri == "qemu:///system"
    assert settings.migration_local_dir == settings.migration_dir
    lab = StreamSettings.from_settings(
        {"migration_dir": "/lab/mig", "migration_local_dir": "/lab/src-mig"}, "qemu:///session"
    )
    assert lab.local_path(Path("/lab/mig/nc-1.sock")) == Path("/lab/src-mig/nc-1.sock")
    with pytest.raises(ConfigError, match="same directory on both hosts"):
        lab.local_path(Path("/elsewhere/nc-1.sock"))
    with pytest.raises(ConfigError, match="migration_path_map"):
        StreamSettings.from_settings({"migration_path_map": ["/a"]}, "qemu:///system")
    with pytest.raises(ConfigError, match="absolute"):
        StreamSettings.from_settings({"migration_dir": "relative"}, "qemu:///system")
    assert settings.page_references is True
    off = StreamSettings.from_settings({"page_references": False}, "qemu:///system")
    assert off.page_references is False
    with pytest.raises(ConfigError, match="page_references must be true or false"):
        StreamSettings.from_settings({"page_references": "yes"}, "qemu:///system")


def test_a_ticket_with_malformedticket_reference_digests_is_refused() -> None:
    good = StreamMigrationTicket(
        endpoint=Endpoint(host="127.0.0.1", port=1),
        session="s",
        data={"reference_digests": ["ab" * 32]},
    )
    assert ticket_reference_digests(good) == ["ab" * 32]
    assert ticket_reference_digests(good.model_copy(update={"data": {}})) == []
    for bad in ("ab" * 32, ["short"], [1], None):
        ticket = good.model_copy(update={"data": {"reference_digests": bad}})
        with pytest.raises(MigrationError, match="malformed reference_digests"):
            ticket_reference_digests(ticket)


async def test_test_driver_offers_no_stream_migration() -> None:
    driver = LibvirtDriver({"uri": "test:///default"})
    try:
        assert DriverFeature.STREAM_MIGRATION_SOURCE not in driver.features
        assert DriverFeature.STREAM_MIGRATION_SINK not in driver.features
        vm = (await driver.list_vms())[0]
        with pytest.raises(FeatureNotSupportedError, match="stream_migration_source"):
            await driver.stream_migration_offer(vm.id)
        offer = StreamMigrationOffer(driver="libvirt", vm=vm, data={"xml": XML})
        with pytest.raises(FeatureNotSupportedError, match="stream_migration_sink"):
            await driver.prepare_stream_migration(
                offer, transport=TcpTransport(), listen=Endpoint(), session="s"
            )
        ticket = StreamMigrationTicket(endpoint=Endpoint(port=1), session="s")
        with pytest.raises(FeatureNotSupportedError, match="stream_migration_source"):
            await driver.migrate_stream_out(
                vm.id, ticket, transport=TcpTransport(), settings=MigrationSettings()
            )
    finally:
        await driver.close()
