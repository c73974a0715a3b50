"""The azure driver beyond the contract: polling, paging, retries, errors, credentials."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points

import pytest
from azure.identity import ClientSecretCredential, DefaultAzureCredential

from novacron_azure import hooks
from novacron_azure.driver import AzureDriver
from novacron_azure.testing import FakeArmTransport, Fault
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

VMS = "/providers/Microsoft.Compute/virtualMachines"


# -- registration ----------------------------------------------------------------------------
def test_registers_the_driver_lazily():
    plugins = build_plugin_manager(autoload=False, plugins=[("azure", hooks)])
    assert plugins.clouds.entry("azure").target == "novacron_azure.driver:AzureDriver"
    assert plugins.clouds.get("azure") is AzureDriver
    assert plugins.failures() == []


def test_entry_point_is_installed():
    (entry,) = [e for e in entry_points(group="novacron_sdk") if e.name == "azure"]
    assert entry.value == "novacron_azure.hooks"


def test_listing_plugins_does_not_import_the_azure_sdk():
    code = textwrap.dedent(
        """
        import sys
        from novacron_sdk.cli.main import main
        code = main(["plugins", "list"])
        heavy = sorted(m for m in sys.modules if m == "azure" or m.startswith("azure."))
        assert code == 0, code
        assert "novacron_azure.hooks" in sys.modules, "the azure plugin was not loaded"
        assert not heavy, heavy
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "azure" in result.stdout


# -- long-running operations and paging -------------------------------------------------------
async def test_operations_are_polled_through_both_headers(arm, driver):
    vm = await driver.create_vm(VMSpec(name="polled"))
    assert vm.state == VMState.RUNNING
    assert arm.count("GET", "/operations/") >= 2  # Azure-AsyncOperation: InProgress, Succeeded
    stopped = await driver.stop(vm.id)
    assert stopped.state == VMState.STOPPED
    assert (await driver.get_vm(vm.id)).extra["provisioning_state"] == "Succeeded"
    await driver.destroy(vm.id)
    assert arm.count("GET", "/operationResults/") >= 2  # DELETE answers with Location only
    with pytest.raises(NotFoundError):
        await driver.get_vm(vm.id)


async def test_listing_follows_next_links(arm, make_driver):
    driver = make_driver(resource_group=None)
    created = [
        await driver.create_vm(VMSpec(name=f"paged-{n}", extra={"resource_group": "rg"}))
        for n in range(5)
    ]
    pages = []
    token = None
    while True:
        page = await driver._list_vms_page(token, 100)
        pages.append([vm.id for vm in page.items])
        token = page.next_token
        if token is None:
            break
    assert [len(p) for p in pages] == [2, 2, 1]  # the fake's page size is 2
    assert sorted(vm_id for page in pages for vm_id in page) == sorted(vm.id for vm in created)
    # Without a resource group, a name is found by scanning every page.
    assert (await driver.get_vm("paged-4")).id == created[4].id


async def test_wait_for_state_reports_progress(arm, make_driver):
    arm.state.polls_per_operation = 3
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
async def test_throttling_is_retried_until_success(arm, driver):
    vm = await driver.create_vm(VMSpec(name="throttled"))
    arm.inject(
        Fault(
            429,
            "TooManyRequests",
            "slow down",
            method="GET",
            path_contains=VMS,
            count=3,
            retry_after="0",
        )
    )
    assert [v.id for v in await driver.list_vms()] == [vm.id]
    assert not arm.state.faults


async def test_throttled_operations_are_reissued(arm, driver):
    vm = await driver.create_vm(VMSpec(name="throttled-stop"))
    arm.inject(Fault(429, "TooManyRequests", "slow down", method="POST", count=2))
    assert (await driver.stop(vm.id)).state == VMState.STOPPED
    assert not arm.state.faults


async def test_throttling_beyond_the_attempts_keeps_the_code(arm, make_driver):
    driver = make_driver(retry={"attempts": 2, "base_delay": 0})
    arm.inject(Fault(429, "TooManyRequests", "Too many requests", count=5))
    with pytest.raises(DriverError) as caught:
        await driver.list_vms()
    assert caught.value.code == "TooManyRequests"
    assert "Too many requests" in str(caught.value)
    assert arm.state.faults[0].count == 3


async def test_missing_vm_keeps_the_arm_code(driver):
    with pytest.raises(NotFoundError) as caught:
        await driver.get_vm("nobody")
    assert caught.value.code == "ResourceNotFound"
    assert "was not found" in str(caught.value)


async def test_conflict_maps_to_invalid_state(driver):
    vm = await driver.create_vm(VMSpec(name="conflict"))
    await driver.stop(vm.id)
    with pytest.raises(InvalidStateError) as caught:
        await driver.reboot(vm.id)
    assert caught.value.code == "OperationNotAllowed"
    assert "deallocated" in str(caught.value)


async def test_failed_operation_maps_to_quota(arm, driver):
    arm.fail_next_operation("AllocationFailed", "Allocation failed. No capacity in westeurope.")
    with pytest.raises(QuotaExceededError) as caught:
        await driver.create_vm(VMSpec(name="no-capacity"))
    assert caught.value.code == "AllocationFailed"
    assert "No capacity" in str(caught.value)


async def test_bad_request_is_not_retried(arm, driver):
    arm.inject(Fault(400, "InvalidParameter", "osDisk.diskSizeGB is invalid", method="PUT"))
    with pytest.raises(DriverError) as caught:
        await driver.create_vm(VMSpec(name="bad-disk", disk_gib=1))
    assert caught.value.code == "InvalidParameter"
    assert arm.count("PUT", VMS) == 1


async def test_rejected_token_is_an_auth_error(arm, driver):
    arm.inject(Fault(401, "InvalidAuthenticationToken", "The access token is invalid."))
    with pytest.raises(DriverError, match="role assignments") as caught:
        await driver.list_vms()
    assert caught.value.code == "InvalidAuthenticationToken"


# -- credentials and settings ----------------------------------------------------------------
async def test_service_principal_from_settings():
    driver = AzureDriver(
        {"subscription_id": "s", "tenant_id": "t", "client_id": "c", "client_secret": "x"}
    )
    assert isinstance(driver.credential(), ClientSecretCredential)
    assert await driver.ex_credential_source() == "ClientSecretCredential"


async def test_default_chain_without_explicit_credentials(monkeypatch):
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", "from-env")
    driver = AzureDriver({})
    assert isinstance(driver.credential(), DefaultAzureCredential)
    assert await driver.ex_credential_source() == "DefaultAzureCredential"
    assert driver.subscription_id == "from-env"


async def test_no_credential_is_one_short_message(
    arm, azure_settings, tmp_path, monkeypatch, caplog
):
    # Nothing for DefaultAzureCredential to find: no Azure CLI, no token caches, no IMDS (the
    # network guard refuses 169.254.169.254).
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    driver = AzureDriver(azure_settings, transport=FakeArmTransport(arm.url))
    try:
        with caplog.at_level(logging.WARNING), pytest.raises(DriverError) as caught:
            await driver.list_vms()
    finally:
        await driver.close()
    text = str(caught.value)
    assert caught.value.code == "ClientAuthenticationError"
    assert "\n" not in text
    assert (
        "(DefaultAzureCredential failed to retrieve a token from the included credentials)" in text
    )
    for advice in ("drivers.settings.azure.tenant_id", "AZURE_CLIENT_SECRET", "'az login'"):
        assert advice in text
    assert "EnvironmentCredential" not in text  # the chain's report is not repeated
    # ... nor logged as a warning next to the error (it is logged at INFO, for -v).
    assert "Attempted credentials" not in caplog.text


def test_half_a_service_principal_is_rejected():
    with pytest.raises(DriverError, match="needs tenant_id and client_id"):
        AzureDriver({"subscription_id": "s", "client_secret": "x"}).credential()


async def test_missing_subscription_is_a_clear_error():
    with pytest.raises(DriverError, match="AZURE_SUBSCRIPTION_ID") as caught:
        await AzureDriver({}).list_vms()
    assert caught.value.code == "MissingSubscription"


@pytest.mark.parametrize(
    ("settings", "key"), [({"stop_mode": "halt"}, "stop_mode"), ({"lcoation": "x"}, "lcoation")]
)
def test_bad_settings_name_the_key(settings, key):
    with pytest.raises(ConfigError, match=f"drivers.settings.azure.{key}"):
        AzureDriver(settings)


# -- catalogue and extras ----------------------------------------------------------------------
async def test_catalogue(arm, make_driver):
    arm.state.images.append(
        {
            "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/golden",
            "name": "golden",
        }
    )
    arm.state.image_versions[("Canonical", "ubuntu", "server")] = ["1.0.0", "1.0.1"]
    driver = make_driver(marketplace_images=["Canonical:ubuntu:server"])
    images = {image.id for image in await driver.list_images()}
    assert images == {
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/golden",
        "Canonical:ubuntu:server:1.0.0",
        "Canonical:ubuntu:server:1.0.1",
    }
    sizes = {size.id: size for size in await driver.list_sizes()}
    assert sizes["Standard_B2s"].vcpus == 2
    assert sizes["Standard_B2s"].memory_mib == 4096
    assert {loc.id for loc in await driver.list_locations()} == {"westeurope", "eastus"}


async def test_spot_tags_and_security_group(arm, driver):
    nsg = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/networkSecurityGroups/web"
    vm = await driver.create_vm(
        VMSpec(
            name="extras",
            tags={"team": "a"},
            extra={"spot": True, "subnet_id": "/subnets/x", "network_security_group_id": nsg},
        )
    )
    assert vm.extra["spot"] is True
    assert vm.extra["network_security_groups"] == [nsg]
    assert (await driver.ex_set_tags(vm.id, {"env": "test"})).tags == {"team": "a", "env": "test"}
    assert (await driver.ex_remove_tags(vm.id, ["team"])).tags == {"env": "test"}


async def test_unknown_extra_is_rejected(driver):
    with pytest.raises(DriverError, match=r"spec\.extra") as caught:
        await driver.create_vm(VMSpec(name="odd", extra={"colour": "blue"}))
    assert caught.value.code == "InvalidParameter"  # the agent answers 422 for this code


async def test_vms_show_the_vcpus_and_memory_of_their_size(arm, driver):
    vm = await driver.create_vm(VMSpec(name="sized", size="Standard_B2s"))
    assert (vm.vcpus, vm.memory_mib) == (2, 4096)
    await driver.create_vm(VMSpec(name="default-size"))  # Standard_B1s
    listed = {v.name: (v.vcpus, v.memory_mib) for v in await driver.list_vms()}
    assert listed == {"sized": (2, 4096), "default-size": (1, 1024)}
    assert arm.count("GET", "/vmSizes") == 1  # once per location, not at every listing


async def test_unreadable_sizes_leave_zero_and_say_why(arm, driver, caplog):
    arm.inject(Fault(403, "AuthorizationFailed", "no read on vmSizes", path_contains="/vmSizes"))
    vm = await driver.create_vm(VMSpec(name="unsized"))
    assert (vm.vcpus, vm.memory_mib) == (0, 0)
    assert [v.id for v in await driver.list_vms()] == [vm.id]
    assert "cannot read the vCPUs and memory of the VM sizes in westeurope" in caplog.text


def test_network_guard_blocks_other_hosts():
    with pytest.raises(RuntimeError, match=r"only talk to 127\.0\.0\.1"):
        socket.getaddrinfo("management.azure.com", 443)
    with pytest.raises(RuntimeError, match=r"only talk to 127\.0\.0\.1"):
        socket.create_connection(("192.0.2.1", 443), timeout=0.1)


async def test_service_principal_from_the_novacron_config(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("NOVACRON_CONFIG", raising=False)
    overrides = {
        "drivers.default": "azure",
        "drivers.settings.azure.subscription_id": "sub-from-config",
        "drivers.settings.azure.tenant_id": "tenant",
        "drivers.settings.azure.client_id": "app",
        "drivers.settings.azure.client_secret": "secret",
    }
    async with AsyncClient(overrides=overrides) as client:
        driver = client.driver()
        assert isinstance(driver, AzureDriver)
        assert await driver.ex_credential_source() == "ClientSecretCredential"
        assert driver.subscription_id == "sub-from-config"
