"""Behaviour of the aws driver beyond the contract: paging, retries, errors, credentials, extras."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from novacron_aws import hooks
from novacron_aws.driver import AwsDriver
from novacron_sdk import AsyncClient
from novacron_sdk.errors import (
    ConfigError,
    DriverError,
    InvalidStateError,
    NotFoundError,
    QuotaExceededError,
)
from novacron_sdk.models import VM, VMSpec, VMState
from novacron_sdk.plugin.manager import build_plugin_manager

REGION = "us-east-1"
AMI = "ami-12c6146b"
KEYS = {"access_key_id": "testing", "secret_access_key": "testing"}


@pytest.fixture
async def driver(aws_env: None, aws_settings: dict[str, Any]) -> AsyncIterator[AwsDriver]:
    with mock_aws():
        driver = AwsDriver(aws_settings)
        yield driver
        await driver.close()


@pytest.fixture
def proxy(fault_proxy: Any) -> Any:
    """The fault-injecting proxy in front of moto (see conftest)."""
    return fault_proxy


@pytest.fixture
async def proxied_driver(proxy: Any, aws_settings: dict[str, Any]) -> AsyncIterator[Any]:
    """Builds drivers that reach moto through the fault proxy; closes them after the test,
    also when it failed (an open connection would be reported in whichever test runs next).
    """
    made: list[AwsDriver] = []

    def build(**settings: object) -> AwsDriver:
        driver = AwsDriver({**aws_settings, **KEYS, "endpoint_url": proxy.url, **settings})
        made.append(driver)
        return driver

    yield build
    for driver in made:
        await driver.close()


# -- registration ----------------------------------------------------------------------------
def test_registers_the_driver_lazily() -> None:
    plugins = build_plugin_manager(autoload=False, plugins=[("aws", hooks)])
    assert plugins.clouds.entry("aws").target == "novacron_aws.driver:AwsDriver"
    assert plugins.clouds.get("aws") is AwsDriver
    assert plugins.failures() == []


def test_entry_point_is_installed() -> None:
    (entry,) = [e for e in entry_points(group="novacron_sdk") if e.name == "aws"]
    assert entry.value == "novacron_aws.hooks"


def test_listing_plugins_does_not_import_boto3() -> None:
    code = textwrap.dedent(
        """
        import sys
        from novacron_sdk.cli.main import main
        code = main(["plugins", "list"])
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("boto3", "botocore"))
        assert code == 0, code
        assert "novacron_aws.hooks" in sys.modules, "the aws plugin was not loaded"
        assert not heavy, heavy
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "aws" in result.stdout


# -- paging ----------------------------------------------------------------------------------
async def test_listing_follows_every_page(driver: AwsDriver) -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    # One reservation per call: EC2 pages by reservation, so 12 calls make several pages.
    ids = {
        ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        for _ in range(12)
    }
    pages: list[tuple[VM, ...]] = []
    token: str | None = None
    while True:
        page = await driver._list_vms_page(token, 5)
        pages.append(page.items)
        token = page.next_token
        if token is None:
            break
    listed = [vm.id for items in pages for vm in items]
    assert len(pages) >= 3
    assert sorted(listed) == sorted(ids)
    assert sorted(vm.id for vm in await driver.list_vms(page_size=5)) == sorted(ids)


async def test_terminated_instances_are_not_listed(driver: AwsDriver) -> None:
    keep = await driver.create_vm(VMSpec(name="keep"))
    gone = await driver.create_vm(VMSpec(name="gone"))
    await driver.destroy(gone.id)
    assert [vm.id for vm in await driver.list_vms()] == [keep.id]
    with pytest.raises(NotFoundError):
        await driver.get_vm("gone")


# -- retries and errors ----------------------------------------------------------------------
async def test_throttling_is_retried_until_success(proxy: Any, proxied_driver: Any) -> None:
    driver = proxied_driver()
    created = await driver.create_vm(VMSpec(name="throttled"))
    proxy.fail_next(3)
    listed = await driver.list_vms()
    assert [vm.id for vm in listed] == [created.id]
    assert proxy.rejected == 3
    await driver.close()


async def test_create_is_retried_without_duplicates(proxy: Any, proxied_driver: Any) -> None:
    driver = proxied_driver()
    proxy.fail_next(2, status=500, code="InternalError", message="We encountered an error")
    vm = await driver.create_vm(VMSpec(name="once"))
    assert [v.id for v in await driver.list_vms()] == [vm.id]
    assert proxy.rejected == 2
    await driver.close()


async def test_throttling_beyond_the_attempts_keeps_the_code(
    proxy: Any, proxied_driver: Any
) -> None:
    driver = proxied_driver(retry={"attempts": 2, "base_delay": 0})
    proxy.fail_next(5)
    with pytest.raises(DriverError) as caught:
        await driver.list_vms()
    assert caught.value.code == "RequestLimitExceeded"
    assert "Request limit exceeded." in str(caught.value)
    assert proxy.rejected == 2
    await driver.close()


async def test_retries_can_be_disabled(proxy: Any, proxied_driver: Any) -> None:
    driver = proxied_driver(retry=False)
    proxy.fail_next(1)
    with pytest.raises(DriverError):
        await driver.list_vms()
    assert proxy.rejected == 1
    await driver.close()


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (400, "InstanceLimitExceeded", QuotaExceededError),
        (400, "IncorrectInstanceState", InvalidStateError),
        (400, "InvalidAMIID.NotFound", NotFoundError),
        (403, "UnauthorizedOperation", DriverError),
    ],
)
async def test_ec2_errors_map_to_the_sdk_hierarchy(
    proxy: Any, proxied_driver: Any, status: int, code: str, error: type[DriverError]
) -> None:
    driver = proxied_driver()
    proxy.fail_next(1, status=status, code=code, message=f"provider says {code}")
    with pytest.raises(error) as caught:
        await driver.create_vm(VMSpec(name="mapped"))
    assert type(caught.value) is error
    assert caught.value.code == code
    assert f"provider says {code}" in str(caught.value)
    assert proxy.rejected == 1  # client errors are not retried
    await driver.close()


async def test_unknown_instance_id_keeps_the_ec2_code(driver: AwsDriver) -> None:
    with pytest.raises(NotFoundError) as caught:
        await driver.get_vm("i-0123456789abcdef0")
    assert caught.value.code == "InvalidInstanceID.NotFound"


async def test_missing_image_names_the_setting(aws_env: None) -> None:
    with mock_aws():
        driver = AwsDriver({"region": REGION})
        with pytest.raises(DriverError, match="default_image"):
            await driver.create_vm(VMSpec(name="no-image"))


# -- credentials -----------------------------------------------------------------------------
async def test_explicit_keys_win(aws_env: None, aws_settings: dict[str, Any]) -> None:
    driver = AwsDriver({**aws_settings, **KEYS})
    assert await driver.ex_credential_source() == "explicit"


async def test_default_chain_reads_the_environment(
    aws_env: None, aws_settings: dict[str, Any]
) -> None:
    assert await AwsDriver(aws_settings).ex_credential_source() == "env"


async def test_profile_from_shared_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text("[team]\naws_access_key_id = AKIATEAM\naws_secret_access_key = s\n")
    config = tmp_path / "config"
    config.write_text("[profile team]\nregion = eu-west-1\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    driver = AwsDriver({"profile": "team"})
    assert await driver.ex_credential_source() == "shared-credentials-file"
    assert driver._session is not None
    assert driver._session.region_name == "eu-west-1"


async def test_no_credentials_is_a_clear_error() -> None:
    with pytest.raises(DriverError, match="default chain") as caught:
        await AwsDriver({"region": REGION, "retry": False}).list_vms()
    assert caught.value.code == "NoCredentialsError"


async def test_half_a_key_pair_is_rejected() -> None:
    with pytest.raises(DriverError, match="both access_key_id and secret_access_key"):
        await AwsDriver({"access_key_id": "AKIA"}).list_vms()


@pytest.mark.parametrize(
    ("settings", "key"),
    [({"regoin": "x"}, "regoin"), ({"wait_timeout": 0}, "wait_timeout")],
)
def test_bad_settings_name_the_key(settings: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=f"drivers.settings.aws.{key}"):
        AwsDriver(settings)


# -- waits and extras ------------------------------------------------------------------------
async def test_actions_wait_with_progress(driver: AwsDriver) -> None:
    seen: list[tuple[VMState, float]] = []
    driver.progress = lambda vm, waited: seen.append((vm.state, waited))
    vm = await driver.create_vm(VMSpec(name="waited"))
    # RunInstances answers "pending": the driver waited, reporting each poll.
    assert vm.state == VMState.RUNNING
    assert seen
    assert seen[-1][0] == VMState.RUNNING
    assert all(waited >= 0 for _, waited in seen)
    assert (await driver.stop(vm.id)).state == VMState.STOPPED


async def test_wait_times_out_naming_the_state(driver: AwsDriver) -> None:
    vm = await driver.create_vm(VMSpec(name="never-stops"))
    with pytest.raises(DriverError, match="still 'running'"):
        await driver.wait_for_state(vm.id, VMState.STOPPED, timeout=0, interval=0)


async def test_tags_spot_and_security_groups(driver: AwsDriver) -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    group = ec2.create_security_group(GroupName="web", Description="web servers")["GroupId"]
    vm = await driver.create_vm(
        VMSpec(name="extras", tags={"team": "a"}, extra={"spot": True, "spot_max_price": "0.01"})
    )
    assert vm.tags == {"team": "a"}
    assert (await driver.get_vm(vm.id)).extra["spot"] is True
    tagged = await driver.ex_set_tags(vm.id, {"env": "test"})
    assert tagged.tags == {"team": "a", "env": "test"}
    assert (await driver.ex_remove_tags(vm.id, ["team"])).tags == {"env": "test"}
    assert group in {g["id"] for g in await driver.ex_list_security_groups()}
    moved = await driver.ex_set_security_groups(vm.id, [group])
    assert moved.extra["security_groups"] == [group]


async def test_vms_show_the_vcpus_and_memory_of_their_type(driver: AwsDriver) -> None:
    vm = await driver.create_vm(VMSpec(name="sized", size="t3.small"))
    assert (vm.vcpus, vm.memory_mib) == (2, 2048)
    await driver.create_vm(VMSpec(name="default-size"))  # t3.micro
    listed = {v.name: (v.vcpus, v.memory_mib) for v in await driver.list_vms()}
    assert listed == {"sized": (2, 2048), "default-size": (2, 1024)}
    assert (await driver.get_vm("sized")).memory_mib == 2048


async def test_unreadable_instance_types_leave_zero_and_say_why(
    proxy: Any, proxied_driver: Any, caplog: pytest.LogCaptureFixture
) -> None:
    driver = proxied_driver()
    proxy.fail_next(
        5,
        status=403,
        code="UnauthorizedOperation",
        message="You are not authorized to perform this operation.",
        action="DescribeInstanceTypes",
    )
    vm = await driver.create_vm(VMSpec(name="unsized"))
    assert (vm.vcpus, vm.memory_mib) == (0, 0)
    assert [v.id for v in await driver.list_vms()] == [vm.id]
    assert proxy.rejected == 1  # asked once per type, not at every listing
    assert "cannot read the vCPUs and memory of instance types t3.micro" in caplog.text
    assert "UnauthorizedOperation" in caplog.text
    await driver.close()


async def test_unknown_extra_is_invalid_input(driver: AwsDriver) -> None:
    with pytest.raises(DriverError, match="spot_price") as caught:
        await driver.create_vm(VMSpec(name="odd", extra={"spot_price": "0.1"}))
    assert caught.value.code == "InvalidParameter"  # the agent answers 422 for this code
    assert await driver.list_vms() == []


async def test_list_images_shows_own_amis(driver: AwsDriver) -> None:
    vm = await driver.create_vm(VMSpec(name="imaged"))
    ec2 = boto3.client("ec2", region_name=REGION)
    image_id = ec2.create_image(InstanceId=vm.id, Name="golden")["ImageId"]
    images = await driver.list_images()
    assert [(i.id, i.name) for i in images] == [(image_id, "golden")]


def test_example_lists_instances_from_a_moto_server(moto_url: str, tmp_path: Path) -> None:
    ec2 = boto3.client(
        "ec2",
        region_name=REGION,
        endpoint_url=moto_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    ec2.run_instances(
        ImageId=AMI,
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "from-example"}]}
        ],
    )
    example = Path(__file__).resolve().parents[4] / "examples" / "aws_list_instances.py"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    result = subprocess.run(
        [sys.executable, str(example), "--region", REGION, "--endpoint-url", moto_url],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "from-example" in result.stdout
    assert "1 instance(s)" in result.stdout


def test_network_guard_blocks_other_hosts() -> None:
    with pytest.raises(RuntimeError, match=r"only talk to 127\.0\.0\.1"):
        socket.getaddrinfo("ec2.us-east-1.amazonaws.com", 443)
    with pytest.raises(RuntimeError, match=r"only talk to 127\.0\.0\.1"):
        socket.create_connection(("169.254.169.254", 80), timeout=0.1)


async def test_credentials_from_the_novacron_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("NOVACRON_CONFIG", raising=False)
    overrides = {
        "drivers.default": "aws",
        "drivers.settings.aws.region": "eu-west-1",
        "drivers.settings.aws.access_key_id": "AKIACONFIG",
        "drivers.settings.aws.secret_access_key": "from-config",
    }
    async with AsyncClient(overrides=overrides) as client:
        driver = client.driver()
        assert isinstance(driver, AwsDriver)
        assert await driver.ex_credential_source() == "explicit"
        assert driver._session is not None
        assert driver._session.region_name == "eu-west-1"
        assert driver._session.get_credentials().access_key == "AKIACONFIG"
