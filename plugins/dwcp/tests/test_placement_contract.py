"""Every DWCP placement policy passes the core's placement contract suite."""

from __future__ import annotations

import pytest

from novacron_dwcp.placement.batch import BatchPolicy
from novacron_dwcp.placement.scheduler import FragmentationAwareScheduler, NovaScheduler
from novacron_sdk.placement.interface import PlacementPolicy
from novacron_sdk.testing.placement import PlacementContract


class TestNovaContract(PlacementContract):
    @pytest.fixture
    def policy(self) -> PlacementPolicy:
        return NovaScheduler()


class TestFragmentationAwareContract(PlacementContract):
    @pytest.fixture
    def policy(self) -> PlacementPolicy:
        return FragmentationAwareScheduler()


class TestBatchGreedyContract(PlacementContract):
    @pytest.fixture
    def policy(self) -> PlacementPolicy:
        return BatchPolicy({"solver": "greedy"})


class TestBatchCpSatContract(PlacementContract):
    @pytest.fixture
    def policy(self) -> PlacementPolicy:
        pytest.importorskip("ortools", reason="the cpsat extra is not installed")
        return BatchPolicy({"solver": "cp-sat", "time_limit_s": 5.0})
