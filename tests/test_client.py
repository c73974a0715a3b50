"""The public clients: AsyncClient and its sync twin Client, against the builtin sim driver."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import novacron_sdk
from novacron_sdk import AsyncClient, Client
from novacron_sdk.errors import (
    FeatureNotSupportedError,
    InvalidStateError,
    NotFoundError,
    NovaCronError,
    UnknownNameError,
)
from novacron_sdk.migration.models import MigrationPhase, MigrationSettings
from novacron_sdk.models import DriverFeature, VMSpec, VMState


@pytest.fixture
def spec() -> VMSpec:
    return VMSpec(name="app-1", vcpus=2, memory_mib=32)


async def test_async_client_full_lifecycle(novacron_config, novacron_plugins, spec):
    async with AsyncClient(config=novacron_config, plugins=novacron_plugins) as client:
        assert client.drivers()["sim"] == "hypervisor"
        vm = await client.create_vm(spec)
        assert (vm.name, vm.state, vm.vcpus, vm.driver) == ("app-1", VMState.RUNNING, 2, "sim")
        assert [v.id for v in await client.list_vms()] == [vm.id]
        assert (await client.get_vm("app-1")).id == vm.id
        assert (await client.stop(vm.id)).state == VMState.STOPPED
        with pytest.raises(InvalidStateError):
            await client.stop(vm.id)
        assert (await client.start(vm.id, driver="sim")).state == VMState.RUNNING
        assert (await client.reboot(vm.id)).state == VMState.RUNNING
        await client.destroy(vm.id)
        assert await client.list_vms() == []
        with pytest.raises(NotFoundError):
            await client.get_vm(vm.id)


async def test_async_client_catalogue(novacron_config, novacron_plugins):
    async with AsyncClient(config=novacron_config, plugins=novacron_plugins) as client:
        driver = client.driver()
        for feature, method in (
            (DriverFeature.IMAGES, client.list_images),
            (DriverFeature.SIZES, client.list_sizes),
            (DriverFeature.LOCATIONS, client.list_locations),
        ):
            if feature in driver.features:
                items = await method()
                assert items, f"sim advertises {feature} and must list something"
                assert all(item.driver == "sim" for item in items)
            else:
                with pytest.raises(FeatureNotSupportedError):
                    await method()


async def test_driver_is_cached_and_configured(novacron_config, novacron_plugins):
    async with AsyncClient(config=novacron_config, plugins=novacron_plugins) as client:
        driver = client.driver("sim")
        assert client.driver() is driver
        configured = novacron_config.section("drivers").settings["sim"]["state_path"]
        assert driver.settings["state_path"] == configured


async def test_unknown_driver_names_the_known_ones(novacron_config, novacron_plugins):
    async with AsyncClient(config=novacron_config, plugins=novacron_plugins) as client:
        with pytest.raises(UnknownNameError, match=r"no compute driver named 'vmware'.*sim"):
            await client.list_vms(driver="vmware")


async def test_closed_client_refuses_work(novacron_config, novacron_plugins):
    client = AsyncClient(config=novacron_config, plugins=novacron_plugins)
    await client.list_vms()
    await client.aclose()
    await client.aclose()
    with pytest.raises(NovaCronError, match="closed"):
        await client.list_vms()


async def test_config_path_overrides_and_driver_defaults(tmp_path: Path, spec):
    config_file = tmp_path / "novacron.yaml"
    from_file = tmp_path / "from-file.json"
    from_set = tmp_path / "from-set.json"
    config_file.write_text(
        json.dumps({"drivers": {"settings": {"sim": {"state_path": str(from_file)}}}})
    )
    async with AsyncClient(
        config_path=config_file,
        overrides={"drivers.settings.sim.state_path": str(from_set)},
        driver_defaults={"sim": {"state_path": str(tmp_path / "default.json")}},
    ) as client:
        assert client.config.path == config_file
        await client.create_vm(spec)
    assert from_set.is_file()
    assert not from_file.exists()
    assert not (tmp_path / "default.json").exists()


async def test_driver_defaults_apply_when_config_has_none(tmp_path: Path, spec):
    config_file = tmp_path / "novacron.yaml"
    config_file.write_text("drivers:\n  default: sim\n")
    default = tmp_path / "default.json"
    async with AsyncClient(
        config_path=config_file, driver_defaults={"sim": {"state_path": str(default)}}
    ) as client:
        await client.create_vm(spec)
    assert default.is_file()
    # A second client on the same state file sees the VM record.
    async with AsyncClient(
        config_path=config_file, driver_defaults={"sim": {"state_path": str(default)}}
    ) as again:
        assert [vm.name for vm in await again.list_vms()] == ["app-1"]


def test_lazy_public_names():
    assert novacron_sdk.AsyncClient is AsyncClient
    assert novacron_sdk.Client is Client
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = novacron_sdk.Nope


# -- sync façade ---------------------------------------------------------------------------
def test_sync_client_full_lifecycle(novacron_config, novacron_plugins, spec):
    with Client(config=novacron_config, plugins=novacron_plugins) as client:
        assert "sim" in client.drivers()
        assert client.config is novacron_config
        assert client.plugins is novacron_plugins
        vm = client.create_vm(spec)
        assert client.driver().features >= {DriverFeature.CREATE}
        assert [v.id for v in client.list_vms()] == [vm.id]
        assert client.get_vm(vm.id).name == "app-1"
        assert client.stop(vm.id).state == VMState.STOPPED
        assert client.start(vm.id).state == VMState.RUNNING
        assert client.reboot(vm.id).state == VMState.RUNNING
        if DriverFeature.SIZES in client.driver().features:
            assert client.list_sizes()
        if DriverFeature.IMAGES in client.driver().features:
            assert client.list_images()
        if DriverFeature.LOCATIONS in client.driver().features:
            assert client.list_locations()
        client.destroy(vm.id)
        assert client.list_vms() == []


def test_sync_client_keeps_driver_state_between_calls(novacron_plugins, spec, tmp_path: Path):
    config_file = tmp_path / "novacron.yaml"
    config_file.write_text("drivers:\n  default: sim\n")  # no state file: VMs live in memory
    with Client(config_path=config_file, plugins=novacron_plugins) as client:
        vm = client.create_vm(spec)
        assert client.get_vm(vm.id).id == vm.id, "the same driver instance serves every call"


def test_sync_client_errors_propagate(novacron_config, novacron_plugins):
    with (
        Client(config=novacron_config, plugins=novacron_plugins) as client,
        pytest.raises(NotFoundError),
    ):
        client.get_vm("missing")


def test_sync_client_close_is_idempotent_and_final(novacron_config, novacron_plugins):
    client = Client(config=novacron_config, plugins=novacron_plugins)
    client.list_vms()
    client.close()
    client.close()
    with pytest.raises(NovaCronError, match="closed"):
        client.list_vms()


def test_sync_client_closes_without_ever_being_used(novacron_config, novacron_plugins):
    Client(config=novacron_config, plugins=novacron_plugins).close()


async def test_sync_client_from_a_thread_running_another_loop(
    novacron_config, novacron_plugins, spec
):
    # Allowed (it blocks this loop while it runs); the client's own loop does the work.
    with Client(config=novacron_config, plugins=novacron_plugins) as client:
        assert client.create_vm(spec).name == "app-1"
        assert len(client.list_vms()) == 1


def test_sync_client_refuses_calls_from_its_own_loop_thread(novacron_config, novacron_plugins):
    with Client(config=novacron_config, plugins=novacron_plugins) as client:
        client.list_vms()

        async def reenter():
            return client.list_vms()

        loop = client._loop  # the client's private loop: only a re-entrant call runs there
        assert loop is not None
        future = asyncio.run_coroutine_threadsafe(reenter(), loop)
        with pytest.raises(RuntimeError, match="its own event loop thread"):
            future.result(timeout=30)


# -- migrate (between two real agents) -----------------------------------------------------
# The agents run the builtins only, so the test does not depend on which plugins are installed.
BUILTINS_ONLY = {"NOVACRON_DISABLE_PLUGIN_AUTOLOAD": "1"}


@pytest.mark.slow
async def test_async_migrate_between_agents(agent_factory, novacron_config, novacron_plugins):
    from novacron_sdk.agent.client import AgentClient

    source, destination = (
        agent_factory("src", env=BUILTINS_ONLY),
        agent_factory("dst", env=BUILTINS_ONLY),
    )
    async with AgentClient(source) as agent:
        vm = await agent.create_vm(VMSpec(name="mover", memory_mib=16))
    events = []
    async with AsyncClient(config=novacron_config, plugins=novacron_plugins) as client:
        report = await client.migrate(
            vm.id,
            source=source,
            to=destination,
            settings=MigrationSettings(downtime_limit_ms=2000),
            progress=events.append,
        )
    assert report.outcome is MigrationPhase.COMPLETED
    assert report.memory_bytes == 16 * 1024 * 1024
    assert events[-1].kind == "completed"
    async with AgentClient(destination) as agent:
        assert [v.name for v in await agent.list_vms()] == ["mover"]
    async with AgentClient(source) as agent:
        assert await agent.list_vms() == []


@pytest.mark.slow
def test_sync_migrate_uses_migration_config(agent_factory, novacron_plugins, tmp_path: Path):
    from novacron_sdk.agent.client import AgentClient

    source, destination = (
        agent_factory("src", env=BUILTINS_ONLY),
        agent_factory("dst", env=BUILTINS_ONLY),
    )

    async def create():
        async with AgentClient(source) as agent:
            return await agent.create_vm(VMSpec(name="mover", memory_mib=16))

    vm = asyncio.run(create())
    config_file = tmp_path / "novacron.yaml"
    config_file.write_text("migration:\n  downtime_limit_ms: 1500\n")
    with Client(config_path=config_file, plugins=novacron_plugins) as client:
        report = client.migrate(vm.id, source=source, to=destination)
    assert report.outcome is MigrationPhase.COMPLETED
    assert report.downtime_limit_ms == 1500


# -- the pytest plugin's fixtures ----------------------------------------------------------
async def test_sim_driver_fixture_keeps_records_in_tmp_path(sim_driver, tmp_path: Path, spec):
    vm = await sim_driver.create_vm(spec)
    assert (tmp_path / "sim-vms.json").is_file()
    assert [v.id for v in await sim_driver.list_vms()] == [vm.id]


def test_novacron_config_fixture_isolates_state(novacron_config, novacron_config_path, tmp_path):
    assert novacron_config.path == novacron_config_path
    sim_settings = novacron_config.section("drivers").settings["sim"]
    assert Path(sim_settings["state_path"]).is_relative_to(tmp_path)
    assert Path(novacron_config.section("state").settings["path"]).is_relative_to(tmp_path)


def test_novacron_plugins_fixture_autoloads_entry_points(novacron_plugins):
    from importlib.metadata import entry_points

    seen = {info.name for info in novacron_plugins.plugins()}
    assert {"builtin-compute", "builtin-core"} <= seen
    assert {ep.name for ep in entry_points(group="novacron_sdk")} <= seen
    assert "sim" in novacron_plugins.hypervisors
