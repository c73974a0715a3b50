"""The gcp driver beyond the contract: operations, paging, retries, errors, credentials."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points

import pytest

from novacron_gcp import hooks
from novacron_gcp.driver import GcpDriver
from novacron_gcp.testing import Fault
from novacron_sdk import AsyncClient
from novacron_sdk.errors import (
    ConfigError,
    DriverError,
    InvalidStateError,
    NotFoundError,
    QuotaExceededError,
)
from novacron_sdk.models import VMSpec, VMState
from novacron_sdk.plugin.manager import build_plugin_manager

AUTHORIZED_USER = {
    "type": "authorized_user",
    "client_id": "novacron-test.apps.googleusercontent.com",
    "client_secret": "not-a-secret",
    "refresh_token": "not-a-token",
}


# -- registration ----------------------------------------------------------------------------
def test_registers_the_driver_lazily():
    plugins = build_plugin_manager(autoload=False, plugins=[("gcp", hooks)])
    assert plugins.clouds.entry("gcp").target == "novacron_gcp.driver:GcpDriver"
    assert plugins.clouds.get("gcp") is GcpDriver
    assert plugins.failures() == []


def test_entry_point_is_installed():
    (entry,) = [e for e in entry_points(group="novacron_sdk") if e.name == "gcp"]
    assert entry.value == "novacron_gcp.hooks"


def test_listing_plugins_does_not_import_the_google_sdk():
    code = textwrap.dedent(
        """
        import sys
        from novacron_sdk.cli.main import main
        code = main(["plugins", "list"])
        heavy = sorted(m for m in sys.modules if m.startswith(("google.cloud", "google.api_core")))
        assert code == 0, code
        assert "novacron_gcp.hooks" in sys.modules, "the gcp plugin was not loaded"
        assert not heavy, heavy
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "gcp" in result.stdout


# -- operations and paging -------------------------------------------------------------------
async def test_driver_waits_on_operations_itself(compute, driver):
    compute.state.waits_per_operation = 3
    vm = await driver.create_vm(VMSpec(name="waited"))
    assert vm.state == VMState.RUNNING
    assert vm.id == "europe-west1-b/waited"
    # Our ZoneOperationsClient (same endpoint) asked the fake until the operation was DONE.
    assert compute.count("POST", "/wait") >= 3
    assert (await driver.stop(vm.id)).state == VMState.STOPPED
    await driver.destroy(vm.id)
    with pytest.raises(NotFoundError):
        await driver.get_vm(vm.id)


async def test_listing_follows_page_tokens(compute, driver):
    created = [await driver.create_vm(VMSpec(name=f"paged-{n}")) for n in range(5)]
    pages = []
    token = None
    while True:
        page = await driver._list_vms_page(token, 2)
        pages.append([vm.id for vm in page.items])
        token = page.next_token
        if token is None:
            break
    assert [len(p) for p in pages] == [2, 2, 1]
    assert sorted(vm_id for page in pages for vm_id in page) == sorted(vm.id for vm in created)
    assert compute.count("GET", "/aggregated/instances") == 3


async def test_wait_for_state_reports_progress(compute, make_driver):
    compute.state.waits_per_operation = 3
    driver = make_driver(wait=False)
    vm = await driver.create_vm(VMSpec(name="progress"))
    assert vm.state == VMState.PENDING
    seen = []
    done = await driver.wait_for_state(
        vm.id, VMState.RUNNING, interval=0, progress=lambda v, waited: seen.append(v.state)
    )
    assert done.state == VMState.RUNNING
    assert seen[0] == VMState.PENDING
    assert seen[-1] == VMState.RUNNING


# -- retries and errors ----------------------------------------------------------------------
@pytest.mark.parametrize("status", [429, 403])
async def test_rate_limits_are_retried_until_success(compute, driver, status):
    vm = await driver.create_vm(VMSpec(name="throttled"))
    compute.inject(
        Fault(
            status,
            "rateLimitExceeded",
            "Rate Limit Exceeded",
            method="GET",
            path_contains="/aggregated/",
            count=3,
        )
    )
    assert [v.id for v in await driver.list_vms()] == [vm.id]
    assert compute.count("GET", "/aggregated/") == 4


async def test_rate_limits_beyond_the_attempts_keep_the_reason(compute, make_driver):
    driver = make_driver(retry={"attempts": 2, "base_delay": 0})
    compute.inject(Fault(429, "rateLimitExceeded", "Rate Limit Exceeded", count=5))
    with pytest.raises(DriverError) as caught:
        await driver.list_vms()
    assert caught.value.code == "rateLimitExceeded"
    assert "Rate Limit Exceeded" in str(caught.value)
    assert compute.state.faults[0].count == 3


async def test_missing_instance_keeps_the_reason(driver):
    with pytest.raises(NotFoundError) as caught:
        await driver.get_vm("europe-west1-b/nobody")
    assert caught.value.code == "notFound"
    assert "was not found" in str(caught.value)


async def test_conflicts_map_to_invalid_state(driver):
    vm = await driver.create_vm(VMSpec(name="twice"))
    with pytest.raises(InvalidStateError) as caught:
        await driver.create_vm(VMSpec(name="twice"))
    assert caught.value.code == "alreadyExists"
    await driver.stop(vm.id)
    with pytest.raises(InvalidStateError) as caught:
        await driver.reboot(vm.id)
    assert caught.value.code == "resourceNotReady"


async def test_failed_operation_maps_to_quota(compute, driver):
    compute.fail_next_operation(
        "ZONE_RESOURCE_POOL_EXHAUSTED", "The zone does not have enough resources available."
    )
    with pytest.raises(QuotaExceededError) as caught:
        await driver.create_vm(VMSpec(name="no-capacity"))
    assert caught.value.code == "ZONE_RESOURCE_POOL_EXHAUSTED"
    assert "enough resources" in str(caught.value)


async def test_bad_request_is_not_retried(compute, driver):
    compute.inject(Fault(400, "invalid", "Invalid value for field 'resource.disks'", "POST"))
    with pytest.raises(DriverError) as caught:
        await driver.create_vm(VMSpec(name="bad"))
    assert caught.value.code == "invalid"
    assert compute.count("POST", "/instances") == 1


# -- credentials and settings ----------------------------------------------------------------
async def test_credentials_file_from_settings(tmp_path):
    path = tmp_path / "adc.json"
    path.write_text(json.dumps(AUTHORIZED_USER))
    driver = GcpDriver({"project": "p", "credentials_file": str(path)})
    assert await driver.ex_credential_source() == "google.oauth2.credentials.Credentials"
    assert driver.project == "p"


async def test_application_default_credentials(tmp_path, monkeypatch):
    path = tmp_path / "adc.json"
    path.write_text(json.dumps(AUTHORIZED_USER))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "from-env")
    driver = GcpDriver({})
    assert await driver.ex_credential_source() == "google.oauth2.credentials.Credentials"
    assert driver.project == "from-env"


async def test_no_credentials_is_a_clear_error():
    with pytest.raises(DriverError, match="application default credentials") as caught:
        await GcpDriver({"project": "p"}).list_vms()
    assert caught.value.code == "DefaultCredentialsError"
    text = str(caught.value)
    assert ".." not in text
    assert "for more information. Set drivers.settings.gcp.credentials_file" in text


def test_missing_project_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "adc.json"
    path.write_text(json.dumps(AUTHORIZED_USER))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    with pytest.raises(DriverError, match="no GCP project") as caught:
        _ = GcpDriver({}).project
    assert caught.value.code == "MissingProject"


@pytest.mark.parametrize(("settings", "key"), [({"zoen": "x"}, "zoen"), ({"wait": "?"}, "wait")])
def test_bad_settings_name_the_key(settings, key):
    with pytest.raises(ConfigError, match=f"drivers.settings.gcp.{key}"):
        GcpDriver(settings)


# -- catalogue and extras ----------------------------------------------------------------------
async def test_catalogue(compute, make_driver):
    compute.state.images.extend([{"name": "golden-1", "family": "golden"}, {"name": "golden-2"}])
    driver = make_driver()
    assert [i.id for i in await driver.list_images()] == [
        f"projects/{compute.project}/global/images/golden-1",
        f"projects/{compute.project}/global/images/golden-2",
    ]
    sizes = {s.id: s for s in await driver.list_sizes()}  # three machine types, two per page
    assert sizes["n2-standard-4"].vcpus == 4
    assert sizes["n2-standard-4"].memory_mib == 16384
    locations = {loc.id: loc for loc in await driver.list_locations()}
    assert locations["europe-west1-c"].parent == "europe-west1"
    assert "us-central1" in locations


async def test_spot_labels_and_network_tags(driver):
    vm = await driver.create_vm(
        VMSpec(name="extras", tags={"team": "a"}, extra={"spot": True, "network_tags": ["web"]})
    )
    assert vm.extra["spot"] is True
    assert vm.extra["network_tags"] == ["web"]
    assert (await driver.ex_set_labels(vm.id, {"env": "test"})).tags == {"team": "a", "env": "test"}
    assert (await driver.ex_remove_labels(vm.id, ["team"])).tags == {"env": "test"}
    assert (await driver.ex_set_network_tags(vm.id, ["db"])).extra["network_tags"] == ["db"]


async def test_unknown_extra_is_rejected(driver):
    with pytest.raises(DriverError, match=r"spec\.extra") as caught:
        await driver.create_vm(VMSpec(name="odd", extra={"colour": "blue"}))
    assert caught.value.code == "InvalidParameter"  # the agent answers 422 for this code


async def test_vms_show_the_vcpus_and_memory_of_their_machine_type(compute, driver):
    small = await driver.create_vm(VMSpec(name="small", size="e2-small"))
    assert (small.vcpus, small.memory_mib) == (2, 2048)
    await driver.create_vm(VMSpec(name="big", size="n2-standard-4", location="europe-west1-c"))
    listed = {vm.name: (vm.vcpus, vm.memory_mib) for vm in await driver.list_vms()}
    assert listed == {"small": (2, 2048), "big": (4, 16384)}
    assert (await driver.get_vm("small")).memory_mib == 2048
    # Asked once per zone and machine type, not at every listing.
    assert compute.count("GET", "/machineTypes/") == 2


async def test_custom_and_unreadable_machine_types(compute, driver, caplog):
    for name, machine in (("custom", "n2-custom-6-12288"), ("mystery", "x9-mystery")):
        compute.state.instances[("europe-west1-b", name)] = {
            "name": name,
            "zone": "zones/europe-west1-b",
            "machineType": f"zones/europe-west1-b/machineTypes/{machine}",
            "status": "RUNNING",
            "selfLink": f"zones/europe-west1-b/instances/{name}",
        }
    listed = {vm.name: (vm.vcpus, vm.memory_mib) for vm in await driver.list_vms()}
    assert listed == {"custom": (6, 12288), "mystery": (0, 0)}  # still listed
    assert "cannot read the vCPUs and memory of machine type x9-mystery" in caplog.text
    assert compute.count("GET", "/machineTypes/") == 1  # the custom type needs no call


def test_network_guard_blocks_other_hosts():
    with pytest.raises(RuntimeError, match=r"only talk to 127\.0\.0\.1"):
        socket.getaddrinfo("compute.googleapis.com", 443)
    with pytest.raises(RuntimeError, match=r"only talk to 127\.0\.0\.1"):
        socket.create_connection(("169.254.169.254", 80), timeout=0.1)


async def test_credentials_file_from_the_novacron_config(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("NOVACRON_CONFIG", raising=False)
    path = tmp_path / "user.json"
    path.write_text(json.dumps(AUTHORIZED_USER))
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "env-project")
    overrides = {"drivers.default": "gcp", "drivers.settings.gcp.credentials_file": str(path)}
    async with AsyncClient(overrides=overrides) as client:
        driver = client.driver()
        assert isinstance(driver, GcpDriver)
        assert await driver.ex_credential_source() == "google.oauth2.credentials.Credentials"
        assert driver.project == "env-project"
