"""The compute-driver and migration contract suites, run on the builtin sim driver."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from novacron_sdk.builtin.sim.driver import SimDriver
from novacron_sdk.models import DriverFeature, VMSpec
from novacron_sdk.testing.compute import ComputeDriverContract, HypervisorMigrationContract

BUSY = {"workload": {"pattern": "hot-set", "rate_mbps": 20, "seed": 3}, "fill": "mixed"}


@pytest.fixture
async def driver() -> AsyncIterator[SimDriver]:
    """A fresh in-memory sim host."""
    sim = SimDriver({"host_name": "contract-host"})
    yield sim
    await sim.close()


class TestSimComputeContract(ComputeDriverContract):
    """SimDriver passes the compute-driver contract."""

    @pytest.fixture
    def vm_spec(self) -> VMSpec:
        return VMSpec(name="contract-vm", memory_mib=64, extra={"fill": "zero"})

    @pytest.fixture
    def invalid_vm_spec(self) -> tuple[VMSpec, str]:
        spec = VMSpec(name="contract-bad", memory_mib=64, extra={"workload": {"pattern": "x"}})
        return spec, "extra.workload.pattern"


class TestSimMigrationContract(HypervisorMigrationContract):
    """Two sim hosts pass the migration contract with a guest that keeps writing."""

    @pytest.fixture
    async def source_driver(self) -> AsyncIterator[SimDriver]:
        sim = SimDriver({"host_name": "contract-source"})
        yield sim
        await sim.close()

    @pytest.fixture
    async def sink_driver(self) -> AsyncIterator[SimDriver]:
        sim = SimDriver({"host_name": "contract-sink"})
        yield sim
        await sim.close()

    @pytest.fixture
    def migration_vm_spec(self) -> VMSpec:
        return VMSpec(name="contract-mig", memory_mib=64, extra=BUSY)

    @pytest.fixture
    def idle_vm_spec(self) -> VMSpec:
        return VMSpec(name="contract-idle", memory_mib=64, extra={"fill": "mixed", "seed": 9})

    @pytest.fixture
    def guest_dirties_memory(self) -> bool:
        return True


class MinimalSimDriver(SimDriver):
    """A sim driver advertising only create/destroy, to exercise the feature checks."""

    features = frozenset({DriverFeature.CREATE, DriverFeature.DESTROY})


class TestMinimalSimComputeContract(ComputeDriverContract):
    """A driver with few features passes too, and refuses what it does not advertise."""

    @pytest.fixture
    async def driver(self) -> AsyncIterator[SimDriver]:
        sim = MinimalSimDriver({"host_name": "minimal-host"})
        yield sim
        await sim.close()

    @pytest.fixture
    def vm_spec(self) -> VMSpec:
        return VMSpec(name="contract-min", memory_mib=64, extra={"fill": "zero"})
