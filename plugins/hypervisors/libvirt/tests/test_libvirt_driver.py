"""libvirt driver behaviour beyond the contract: registration, events, volumes, errors."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

pytest.importorskip(
    "libvirt", reason="libvirt-python is not installed (pip install libvirt-python)"
)

import libvirt

from novacron_libvirt import hooks
from novacron_libvirt.driver import LibvirtDriver
from novacron_sdk.agent.app import create_app
from novacron_sdk.agent.service import AgentService
from novacron_sdk.errors import (
    ConfigError,
    DriverError,
    FeatureNotSupportedError,
    InvalidStateError,
    NotFoundError,
)
from novacron_sdk.models import DriverFeature, VMEvent, VMSpec, VMState
from novacron_sdk.plugin.manager import build_plugin_manager
from novacron_sdk.testing.pytest_plugin import CliResult

TEST_URI = "test:///default"


@pytest.fixture
async def driver() -> AsyncIterator[LibvirtDriver]:
    """A driver on libvirt's in-process test hypervisor."""
    driver = LibvirtDriver({"uri": TEST_URI, "shutdown_timeout_s": 5})
    try:
        yield driver
    finally:
        await driver.close()


def spec(label: str, **fields: object) -> VMSpec:
    """A small VM spec with a name no other test uses."""
    return VMSpec.model_validate({"name": f"lv-{label}-{secrets.token_hex(3)}", **fields})


def test_registers_the_driver_lazily() -> None:
    plugins = build_plugin_manager(autoload=False, plugins=[("libvirt", hooks)])
    entry = plugins.hypervisors.entry("libvirt")
    assert entry.target == "novacron_libvirt.driver:LibvirtDriver"
    assert plugins.hypervisors.get("libvirt") is LibvirtDriver
    assert plugins.failures() == []


def test_listing_plugins_does_not_import_libvirt() -> None:
    code = (
        "import sys\n"
        "from novacron_libvirt import hooks\n"
        "from novacron_sdk.plugin.manager import build_plugin_manager\n"
        "pm = build_plugin_manager(autoload=False, plugins=[('libvirt', hooks)])\n"
        "assert 'libvirt' in pm.hypervisors.names()\n"
        "assert 'libvirt' not in sys.modules, 'listing imported libvirt'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_features_follow_the_connection(driver: LibvirtDriver) -> None:
    assert DriverFeature.IMAGES in driver.features
    assert DriverFeature.EVENTS in driver.features
    # A stream source is not a page-level MigrationSource: never advertised as one.
    assert DriverFeature.LIVE_MIGRATION_SOURCE not in driver.features
    quiet = LibvirtDriver({"uri": TEST_URI, "events": False})
    try:
        assert DriverFeature.EVENTS not in quiet.features
        with pytest.raises(FeatureNotSupportedError):
            quiet.set_event_sink(lambda _event: None)
    finally:
        await quiet.close()


async def test_bad_uri_and_settings_raise_sdk_errors() -> None:
    with pytest.raises(DriverError, match="cannot open libvirt connection"):
        LibvirtDriver({"uri": "test:///no/such/file.xml"})
    with pytest.raises(ConfigError, match="shutdown_timeout_s"):
        LibvirtDriver({"uri": TEST_URI, "shutdown_timeout_s": "soon"})


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"urii": "x"}, "drivers.settings.libvirt.urii: unknown key (did you mean 'uri'?)"),
        (
            {"uri": TEST_URI, "shutdown_timout_s": 1},
            "drivers.settings.libvirt.shutdown_timout_s: unknown key "
            "(did you mean 'shutdown_timeout_s'?)",
        ),
        ({"uri": TEST_URI, "events": "maybe"}, "drivers.settings.libvirt.events: "),
        ({"uri": TEST_URI, "migration_path_map": ["/a"]}, "migration_path_map: "),
    ],
)
def test_bad_settings_name_the_key(settings: dict[str, object], problem: str) -> None:
    # Checked before the connection opens: the bad URI "x" is never tried.
    with pytest.raises(ConfigError, match=r"^invalid libvirt driver settings: ") as caught:
        LibvirtDriver(settings)
    assert problem in str(caught.value)


def test_a_mistyped_setting_on_the_command_line_is_refused(
    novacron_cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("HOME", "XDG_CONFIG_HOME"):
        monkeypatch.setenv(name, str(tmp_path))
    monkeypatch.delenv("NOVACRON_CONFIG", raising=False)
    result = novacron_cli(
        "--set",
        "drivers.settings.libvirt.urii=test:///default",
        "vm",
        "list",
        "--driver",
        "libvirt",
    )
    assert result.exit_code != 0
    assert "drivers.settings.libvirt.urii: unknown key (did you mean 'uri'?)" in result.stderr


async def test_domain_events_feed_vm_events(driver: LibvirtDriver) -> None:
    events: asyncio.Queue[VMEvent] = asyncio.Queue()
    driver.set_event_sink(events.put_nowait)
    vm = await driver.create_vm(spec("events"))
    await driver.pause(vm.id)
    await driver.resume(vm.id)
    await driver.destroy(vm.id)
    seen: list[VMState] = []
    while VMState.TERMINATED not in seen:
        event = await asyncio.wait_for(events.get(), timeout=10)
        if event.vm_id == vm.id:
            assert event.driver == driver.name
            seen.append(event.state)
    assert seen == [
        VMState.STOPPED,  # defined
        VMState.RUNNING,  # started
        VMState.PAUSED,
        VMState.RUNNING,  # resumed
        VMState.STOPPED,  # destroyed
        VMState.TERMINATED,  # undefined
    ]
    driver.set_event_sink(None)


async def test_errors_map_to_sdk_errors(driver: LibvirtDriver) -> None:
    vm = await driver.create_vm(spec("errors"))
    try:
        with pytest.raises(InvalidStateError) as caught:
            await driver.start(vm.id)
        assert caught.value.code == "VIR_ERR_OPERATION_INVALID"
        with pytest.raises(InvalidStateError):
            await driver.resume(vm.id)
        with pytest.raises(NotFoundError) as missing:
            await driver.pause("00000000-0000-0000-0000-000000000000")
        assert missing.value.code == "VIR_ERR_NO_DOMAIN"
    finally:
        await driver.destroy(vm.id)


async def test_define_undefine_and_tags(driver: LibvirtDriver) -> None:
    vm = await driver.create_vm(spec("tags", tags={"team": "infra"}))
    try:
        assert vm.tags == {"team": "infra"}
        assert (await driver.get_vm(vm.name)).tags == {"team": "infra"}
        stopped = await driver.stop(vm.id)
        assert stopped.state == VMState.STOPPED
        xml = await driver.ex_domain_xml(vm.id)
    finally:
        await driver.ex_undefine(vm.id)
    with pytest.raises(NotFoundError):
        await driver.get_vm(vm.id)
    defined = await driver.ex_define_xml(xml)
    assert defined.id == vm.id
    assert defined.state == VMState.STOPPED
    await driver.destroy(defined.id)


async def test_storage_volumes_are_images(driver: LibvirtDriver) -> None:
    pool = driver.ex_connection.storagePoolLookupByName("default-pool")
    name = f"lv-image-{secrets.token_hex(3)}.img"
    volume_xml = (
        f"<volume><name>{name}</name><capacity unit='MiB'>8</capacity>"
        "<target><format type='raw'/></target></volume>"
    )
    volume = await asyncio.to_thread(pool.createXML, volume_xml, 0)
    try:
        images = await driver.list_images()
        image = next(image for image in images if image.extra["volume"] == name)
        assert image.name == f"default-pool/{name}"
        assert image.extra["capacity_bytes"] == 8 * 1024 * 1024
        vm = await driver.create_vm(spec("img", image=image.name))
        try:
            assert vm.image == image.extra["path"]
        finally:
            await driver.destroy(vm.id)
    finally:
        await asyncio.to_thread(volume.delete, 0)


async def test_sizes_and_locations_come_from_the_host(driver: LibvirtDriver) -> None:
    (host,) = await driver.list_hosts()
    sizes = await driver.list_sizes()
    assert sizes
    assert all(s.vcpus <= host.vcpus and s.memory_mib <= host.memory_mib for s in sizes)
    (location,) = await driver.list_locations()
    assert location.id == host.id
    vm = await driver.create_vm(spec("size", size=sizes[0].id, location=location.id))
    try:
        assert (vm.vcpus, vm.memory_mib) == (sizes[0].vcpus, sizes[0].memory_mib)
    finally:
        await driver.destroy(vm.id)
    with pytest.raises(NotFoundError, match="size"):
        await driver.create_vm(spec("nosize", size="enormous"))
    with pytest.raises(NotFoundError, match="location"):
        await driver.create_vm(spec("noloc", location="elsewhere"))


async def test_unknown_spec_extra_is_rejected(driver: LibvirtDriver) -> None:
    with pytest.raises(DriverError, match="bogus") as caught:
        await driver.create_vm(spec("extra", extra={"bogus": 1}))
    assert caught.value.code == "InvalidParameter"
    with pytest.raises(DriverError, match=r"'kernell' \(did you mean 'kernel'\?\)"):
        await driver.create_vm(spec("extra", extra={"kernell": "/boot/vmlinuz"}))


@pytest.fixture
async def agent_api(driver: LibvirtDriver) -> AsyncIterator[httpx.AsyncClient]:
    """The agent's control API on the test-driver connection, in-process."""
    service = AgentService(plugins=build_plugin_manager(autoload=False), driver=driver, name="lv")
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(base_url="http://agent.test", transport=transport) as client:
        yield client


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"kernell": "/boot/vmlinuz"}, "did you mean 'kernel'?"),
        ({"domain_xml": "<domain"}, "spec.extra['domain_xml'] is not valid XML"),
    ],
)
async def test_agent_answers_bad_spec_extra_with_422(
    driver: LibvirtDriver, agent_api: httpx.AsyncClient, extra: dict[str, str], words: str
) -> None:
    before = {vm.id for vm in await driver.list_vms()}
    response = await agent_api.post("/v1/vms", json={"name": "lv-api-bad", "extra": extra})
    assert response.status_code == 422, response.text
    assert response.json()["kind"] == "DriverError"
    assert words in response.json()["error"]
    assert {vm.id for vm in await driver.list_vms()} == before


def test_libvirt_error_codes_keep_their_names() -> None:
    from novacron_libvirt.errors import code_name

    error = libvirt.libvirtError("synthetic")
    error.err = (libvirt.VIR_ERR_NO_DOMAIN, 0, "no domain", 2, "", "", "", 0, 0)
    assert code_name(error) == "VIR_ERR_NO_DOMAIN"
