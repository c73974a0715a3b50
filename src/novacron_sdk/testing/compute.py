"""Contract suites every compute driver (and every migration-capable hypervisor driver) must pass.

Subclass :class:`ComputeDriverContract` in a test module and provide a ``driver`` fixture;
subclass :class:`HypervisorMigrationContract` and provide ``source_driver`` and
``sink_driver``. Fixtures such as ``vm_spec`` can be overridden to fit the driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from pydantic import ValidationError

from novacron_sdk.compute.interface import ComputeDriver
from novacron_sdk.errors import DriverError, FeatureNotSupportedError, NotFoundError
from novacron_sdk.hypervisors.interface import (
    HypervisorDriver,
    MigrationSink,
    MigrationSource,
    MigrationSourceInfo,
)
from novacron_sdk.migration.digests import page_digest
from novacron_sdk.models import VM, DriverFeature, Host, Image, Location, Size, VMSpec, VMState

MISSING_ID = "novacron-contract-no-such-vm"
PageDigest = Callable[[bytes], bytes]


def unique_spec(spec: VMSpec, label: str) -> VMSpec:
    """A copy of ``spec`` with a name no other test uses."""
    name = f"{spec.name[:40]}-{label}-{secrets.token_hex(3)}"
    return spec.model_copy(update={"name": name}, deep=True)


async def destroy_quietly(driver: ComputeDriver, vm_id: str) -> None:
    """Destroy ``vm_id`` if it still exists (test clean-up)."""
    with contextlib.suppress(NotFoundError):
        await driver.destroy(vm_id)


def default_page_digest(page: bytes) -> bytes:
    """The SDK's page digest (XXH3-128), which the migration engine compares at switch-over."""
    return page_digest(page)


class ComputeDriverContract:
    """Every compute driver must pass this. Subclass it and provide a ``driver`` fixture.

    Override ``vm_spec`` for a spec the driver can create cheaply, and ``invalid_vm_spec``
    for a (spec, field) pair the driver must reject with an error naming ``field``.
    """

    @pytest.fixture
    def vm_spec(self) -> VMSpec:
        """A small VM the driver can create quickly."""
        return VMSpec(name="contract-vm", vcpus=1, memory_mib=64)

    @pytest.fixture
    def invalid_vm_spec(self) -> tuple[VMSpec, str] | None:
        """A spec that passes VMSpec validation but that the driver rejects, and the field."""
        return None

    async def test_features_are_driver_features(self, driver: ComputeDriver) -> None:
        """``features`` is a frozenset of DriverFeature and the driver has a name."""
        assert isinstance(driver.features, frozenset)
        assert all(isinstance(feature, DriverFeature) for feature in driver.features)
        assert driver.name
        assert isinstance(driver.name, str)

    async def test_create_get_list_destroy(self, driver: ComputeDriver, vm_spec: VMSpec) -> None:
        """A created VM can be found by id and name, is listed once, and is gone when destroyed."""
        _require(driver, DriverFeature.CREATE, DriverFeature.DESTROY)
        spec = unique_spec(vm_spec, "crud")
        vm = await driver.create_vm(spec)
        try:
            assert vm.name == spec.name
            assert vm.driver == driver.name
            assert (await driver.get_vm(vm.id)).id == vm.id
            assert (await driver.get_vm(spec.name)).id == vm.id
            assert [v.id for v in await driver.list_vms()].count(vm.id) == 1
        finally:
            await driver.destroy(vm.id)
        with pytest.raises(NotFoundError):
            await driver.get_vm(vm.id)
        assert vm.id not in {v.id for v in await driver.list_vms()}
        with pytest.raises(NotFoundError):
            await driver.destroy(vm.id)

    async def test_pagination_lists_every_vm_once(
        self, driver: ComputeDriver, vm_spec: VMSpec
    ) -> None:
        """With a page size smaller than the VM count, every VM is listed exactly once."""
        _require(driver, DriverFeature.CREATE, DriverFeature.DESTROY)
        created: list[VM] = []
        try:
            for n in range(7):
                created.append(await driver.create_vm(unique_spec(vm_spec, f"page{n}")))
            ours = {vm.id for vm in created}
            iterated = [vm.id async for vm in driver.iter_vms(page_size=3)]
            listed = [vm.id for vm in await driver.list_vms(page_size=3)]
            for ids in (iterated, listed):
                assert len(ids) == len(set(ids)), "a VM was listed twice"
                assert ours <= set(ids), "a VM was missing from the listing"
            assert set(listed) == {vm.id for vm in await driver.list_vms(page_size=1000)}
        finally:
            for vm in created:
                await destroy_quietly(driver, vm.id)

    async def test_listed_vms_are_well_formed(self, driver: ComputeDriver, vm_spec: VMSpec) -> None:
        """Listed VMs carry the driver's name and a VMState."""
        _require(driver, DriverFeature.CREATE, DriverFeature.DESTROY)
        vm = await driver.create_vm(unique_spec(vm_spec, "form"))
        try:
            for listed in await driver.list_vms():
                assert listed.driver == driver.name
                assert isinstance(listed.state, VMState)
        finally:
            await driver.destroy(vm.id)

    async def test_start_stop(self, driver: ComputeDriver, vm_spec: VMSpec) -> None:
        """stop then start moves a VM through stopped and back to running."""
        _require(driver, DriverFeature.CREATE, DriverFeature.DESTROY, DriverFeature.START_STOP)
        vm = await driver.create_vm(unique_spec(vm_spec, "ss"))
        try:
            stopped = await driver.stop(vm.id)
            assert stopped.state in {VMState.STOPPED, VMState.STOPPING}
            started = await driver.start(vm.id)
            assert started.state in {VMState.RUNNING, VMState.PENDING}
        finally:
            await driver.destroy(vm.id)

    async def test_reboot(self, driver: ComputeDriver, vm_spec: VMSpec) -> None:
        """A running VM can be rebooted and is still there afterwards."""
        _require(driver, DriverFeature.CREATE, DriverFeature.DESTROY, DriverFeature.REBOOT)
        vm = await driver.create_vm(unique_spec(vm_spec, "rb"))
        try:
            rebooted = await driver.reboot(vm.id)
            assert rebooted.id == vm.id
            assert rebooted.state in {VMState.RUNNING, VMState.REBOOTING, VMState.PENDING}
        finally:
            await driver.destroy(vm.id)

    async def test_pause_resume(self, driver: ComputeDriver, vm_spec: VMSpec) -> None:
        """A hypervisor advertising PAUSE pauses and resumes a running VM."""
        if not isinstance(driver, HypervisorDriver):
            pytest.skip("pause/resume belong to hypervisor drivers")
        _require(driver, DriverFeature.CREATE, DriverFeature.DESTROY, DriverFeature.PAUSE)
        vm = await driver.create_vm(unique_spec(vm_spec, "pr"))
        try:
            assert (await driver.pause(vm.id)).state == VMState.PAUSED
            assert (await driver.get_vm(vm.id)).state == VMState.PAUSED
            assert (await driver.resume(vm.id)).state == VMState.RUNNING
        finally:
            await driver.destroy(vm.id)

    async def test_unknown_id_raises_not_found(self, driver: ComputeDriver) -> None:
        """Every advertised per-VM operation raises NotFoundError for an unknown id."""
        with pytest.raises(NotFoundError):
            await driver.get_vm(MISSING_ID)
        operations: list[tuple[DriverFeature, Callable[[str], Awaitable[Any]]]] = [
            (DriverFeature.START_STOP, driver.start),
            (DriverFeature.START_STOP, driver.stop),
            (DriverFeature.REBOOT, driver.reboot),
            (DriverFeature.DESTROY, driver.destroy),
        ]
        for feature, operation in operations:
            if feature in driver.features:
                with pytest.raises(NotFoundError):
                    await operation(MISSING_ID)

    async def test_unadvertised_feature_raises(
        self, driver: ComputeDriver, vm_spec: VMSpec
    ) -> None:
        """An operation outside ``features`` raises FeatureNotSupportedError."""
        calls = _feature_calls(driver, unique_spec(vm_spec, "nf"))
        missing = [feature for feature in calls if feature not in driver.features]
        if not missing:
            pytest.skip("the driver advertises every feature this test can exercise")
        for feature in missing:
            with pytest.raises(FeatureNotSupportedError):
                await calls[feature]()

    async def test_catalogue_models(self, driver: ComputeDriver) -> None:
        """Images, sizes and locations are models tagged with the driver's name."""
        listings: list[tuple[DriverFeature, Callable[[], Awaitable[Sequence[Any]]], type]] = [
            (DriverFeature.IMAGES, driver.list_images, Image),
            (DriverFeature.SIZES, driver.list_sizes, Size),
            (DriverFeature.LOCATIONS, driver.list_locations, Location),
        ]
        advertised = [entry for entry in listings if entry[0] in driver.features]
        if not advertised:
            pytest.skip("the driver advertises no catalogue")
        for _feature, listing, model in advertised:
            items = await listing()
            assert all(isinstance(item, model) for item in items)
            assert all(item.driver == driver.name for item in items)
            assert len({item.id for item in items}) == len(items), "duplicate catalogue ids"

    async def test_hosts(self, driver: ComputeDriver) -> None:
        """A hypervisor advertising HOSTS lists its hosts with positive capacity."""
        if not isinstance(driver, HypervisorDriver) or DriverFeature.HOSTS not in driver.features:
            pytest.skip("not a hypervisor driver advertising HOSTS")
        hosts = await driver.list_hosts()
        assert hosts
        for host in hosts:
            assert isinstance(host, Host)
            assert host.driver == driver.name
            assert host.vcpus > 0
            assert host.memory_mib > 0

    async def test_invalid_spec_rejected_naming_field(
        self, driver: ComputeDriver, invalid_vm_spec: tuple[VMSpec, str] | None
    ) -> None:
        """Bad specs fail with an error that names the offending field, creating nothing."""
        with pytest.raises(ValidationError, match="name"):
            VMSpec(name="not a valid name!")
        with pytest.raises(ValidationError, match="vcpus"):
            VMSpec(name="contract-bad", vcpus=0)
        if invalid_vm_spec is None or DriverFeature.CREATE not in driver.features:
            return
        spec, field = invalid_vm_spec
        before = {vm.id for vm in await driver.list_vms()}
        with pytest.raises((DriverError, ValidationError)) as caught:
            await driver.create_vm(spec)
        assert field in str(caught.value)
        assert {vm.id for vm in await driver.list_vms()} == before


def _require(driver: ComputeDriver, *features: DriverFeature) -> None:
    missing = [feature.value for feature in features if feature not in driver.features]
    if missing:
        pytest.skip(f"driver does not advertise {', '.join(missing)}")


def _feature_calls(
    driver: ComputeDriver, spec: VMSpec
) -> dict[DriverFeature, Callable[[], Awaitable[Any]]]:
    calls: dict[DriverFeature, Callable[[], Awaitable[Any]]] = {
        DriverFeature.CREATE: lambda: driver.create_vm(spec),
        DriverFeature.START_STOP: lambda: driver.start(MISSING_ID),
        DriverFeature.REBOOT: lambda: driver.reboot(MISSING_ID),
        DriverFeature.DESTROY: lambda: driver.destroy(MISSING_ID),
        DriverFeature.IMAGES: driver.list_images,
        DriverFeature.SIZES: driver.list_sizes,
        DriverFeature.LOCATIONS: driver.list_locations,
        DriverFeature.STREAM_MIGRATION_SOURCE: lambda: driver.stream_migration_offer(MISSING_ID),
    }
    if isinstance(driver, HypervisorDriver):
        info = MigrationSourceInfo(spec=spec, page_count=spec.memory_mib * 256)
        calls[DriverFeature.PAUSE] = lambda: driver.pause(MISSING_ID)
        calls[DriverFeature.LIVE_MIGRATION_SOURCE] = lambda: driver.open_migration_source(
            MISSING_ID
        )
        calls[DriverFeature.LIVE_MIGRATION_SINK] = lambda: driver.open_migration_sink(info)
    return calls


async def copy_pages(
    source: MigrationSource, sink: MigrationSink, indices: Sequence[int], batch: int = 256
) -> None:
    """Copy ``indices`` from ``source`` to ``sink`` in batches, as the engine would."""
    for start in range(0, len(indices), batch):
        chunk = indices[start : start + batch]
        await sink.write_pages(chunk, await source.read_pages(chunk))


async def source_digests(
    source: MigrationSource, page_count: int, page_digest: PageDigest, batch: int = 1024
) -> list[bytes]:
    """Digests of every page of ``source``, computed from the bytes it reads."""
    size = source.info().page_size
    out: list[bytes] = []
    for start in range(0, page_count, batch):
        data = await source.read_pages(range(start, min(start + batch, page_count)))
        out.extend(page_digest(data[n : n + size]) for n in range(0, len(data), size))
    return out


async def wait_for_dirty_pages(source: MigrationSource, patience_s: float = 20.0) -> list[int]:
    """Poll ``collect_dirty`` until the guest has written something (or ``patience_s`` passes)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience_s
    while True:
        dirty = await source.collect_dirty()
        if dirty or loop.time() > deadline:
            return dirty
        await asyncio.sleep(0.02)


class HypervisorMigrationContract:
    """Every driver advertising LIVE_MIGRATION_SOURCE/SINK must pass this.

    Provide ``source_driver`` and ``sink_driver`` fixtures (two hosts). Override
    ``migration_vm_spec`` with a VM whose guest writes memory on its own and set
    ``guest_dirties_memory`` to True, so the suite checks that pages dirtied during pre-copy
    arrive too; ``idle_vm_spec`` is a VM whose memory does not change by itself.
    """

    @pytest.fixture
    def migration_vm_spec(self) -> VMSpec:
        """The VM migrated by the suite (ideally one whose guest keeps writing memory)."""
        return VMSpec(name="contract-mig", vcpus=1, memory_mib=64)

    @pytest.fixture
    def idle_vm_spec(self) -> VMSpec:
        """A VM whose memory only changes when someone writes it (for the rollback check)."""
        return VMSpec(name="contract-idle", vcpus=1, memory_mib=64)

    @pytest.fixture
    def guest_dirties_memory(self) -> bool:
        """Whether a ``migration_vm_spec`` guest writes memory while it runs."""
        return False

    @pytest.fixture
    def page_digest(self) -> PageDigest:
        """The digest ``MigrationSink.page_digests`` returns for a page's bytes."""
        return default_page_digest

    async def test_live_migration_moves_every_page(
        self,
        source_driver: HypervisorDriver,
        sink_driver: HypervisorDriver,
        migration_vm_spec: VMSpec,
        guest_dirties_memory: bool,
        page_digest: PageDigest,
    ) -> None:
        """Pre-copy while running, pause, copy the rest: the sink holds the source's pages."""
        _require_migration(source_driver, sink_driver)
        spec = unique_spec(migration_vm_spec, "live")
        vm = await source_driver.create_vm(spec)
        source = await source_driver.open_migration_source(vm.id)
        info = source.info()
        assert info.page_count * info.page_size == spec.memory_mib * 1024 * 1024
        assert (await source_driver.get_vm(vm.id)).state == VMState.MIGRATING
        sink = await sink_driver.open_migration_sink(info)
        try:
            await source.start_tracking()
            first = await source.collect_dirty()
            assert first == list(range(info.page_count)), "first round must cover every page"
            await copy_pages(source, sink, first)
            if guest_dirties_memory:
                dirtied = await wait_for_dirty_pages(source)
                assert dirtied, "the guest wrote nothing during pre-copy"
                assert dirtied == sorted(set(dirtied))
                await copy_pages(source, sink, dirtied, batch=32)
            await source.pause()
            await copy_pages(source, sink, await source.collect_dirty(), batch=32)
            await asyncio.sleep(0.05)
            assert await source.collect_dirty() == [], "pages changed after pause()"
            await sink.set_device_state(await source.device_state())
            expected = await source_digests(source, info.page_count, page_digest)
            for start in range(0, info.page_count, 1024):
                got = await sink.page_digests(range(start, min(start + 1024, info.page_count)))
                assert got == expected[start : start + 1024], f"pages from {start} differ"
        except BaseException:
            await sink.abort()
            await source.rollback()
            await destroy_quietly(source_driver, vm.id)
            raise
        moved = await sink.activate()
        await source.release()
        try:
            assert moved.state == VMState.RUNNING
            assert moved.name == spec.name
            assert (await sink_driver.get_vm(spec.name)).state == VMState.RUNNING
            with pytest.raises(NotFoundError):
                await source_driver.get_vm(vm.id)
        finally:
            await destroy_quietly(sink_driver, moved.id)

    async def test_rollback_leaves_source_untouched(
        self,
        source_driver: HypervisorDriver,
        sink_driver: HypervisorDriver,
        idle_vm_spec: VMSpec,
        page_digest: PageDigest,
    ) -> None:
        """After throttle, pause and rollback the VM runs at the source with the same memory."""
        _require_migration(source_driver, sink_driver)
        spec = unique_spec(idle_vm_spec, "rollback")
        vm = await source_driver.create_vm(spec)
        try:
            source = await source_driver.open_migration_source(vm.id)
            info = source.info()
            sink = await sink_driver.open_migration_sink(info)
            await source.start_tracking()
            before = await source_digests(source, info.page_count, page_digest)
            await copy_pages(source, sink, await source.collect_dirty())
            if DriverFeature.THROTTLE in source_driver.features:
                await source.set_throttle(0.5)
            await source.pause()
            await source.device_state()
            await source.rollback()
            await sink.abort()
            assert (await source_driver.get_vm(vm.id)).state == VMState.RUNNING
            assert spec.name not in {v.name for v in await sink_driver.list_vms()}
            again = await source_driver.open_migration_source(vm.id)
            await again.pause()
            after = await source_digests(again, info.page_count, page_digest)
            await again.rollback()
            changed = [n for n, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
            assert not changed, f"rollback changed {len(changed)} pages, first {changed[:5]}"
        finally:
            await destroy_quietly(source_driver, vm.id)

    async def test_rollback_resumes_a_busy_guest(
        self,
        source_driver: HypervisorDriver,
        sink_driver: HypervisorDriver,
        migration_vm_spec: VMSpec,
        guest_dirties_memory: bool,
    ) -> None:
        """A throttled, paused guest runs (and writes memory) again after rollback."""
        _require_migration(source_driver, sink_driver)
        if not guest_dirties_memory:
            pytest.skip("migration_vm_spec guest does not write memory by itself")
        vm = await source_driver.create_vm(unique_spec(migration_vm_spec, "resume"))
        try:
            source = await source_driver.open_migration_source(vm.id)
            await source.start_tracking()
            await source.collect_dirty()
            if DriverFeature.THROTTLE in source_driver.features:
                await source.set_throttle(0.99)
            await source.pause()
            await source.rollback()
            again = await source_driver.open_migration_source(vm.id)
            await again.start_tracking()
            await again.collect_dirty()
            assert await wait_for_dirty_pages(again), "the guest stayed paused after rollback"
            await again.rollback()
        finally:
            await destroy_quietly(source_driver, vm.id)

    async def test_bad_device_state_is_rejected(
        self,
        source_driver: HypervisorDriver,
        sink_driver: HypervisorDriver,
        idle_vm_spec: VMSpec,
    ) -> None:
        """Garbage device state raises DriverError, and the sink can still be aborted."""
        _require_migration(source_driver, sink_driver)
        spec = unique_spec(idle_vm_spec, "badstate")
        info = MigrationSourceInfo(spec=spec, page_count=spec.memory_mib * 256)
        sink = await sink_driver.open_migration_sink(info)
        try:
            with pytest.raises(DriverError):
                await sink.set_device_state(b"\x00 not a device state")
        finally:
            await sink.abort()
        assert spec.name not in {v.name for v in await sink_driver.list_vms()}


def _require_migration(source: HypervisorDriver, sink: HypervisorDriver) -> None:
    if DriverFeature.LIVE_MIGRATION_SOURCE not in source.features:
        pytest.skip("source driver does not advertise live_migration_source")
    if DriverFeature.LIVE_MIGRATION_SINK not in sink.features:
        pytest.skip("sink driver does not advertise live_migration_sink")
