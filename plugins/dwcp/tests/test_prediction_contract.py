"""Every DWCP predictor passes the core's predictor contract suite."""

from __future__ import annotations

import pytest

from novacron_dwcp.prediction.learned import LearnedPredictor
from novacron_dwcp.prediction.predictors import (
    HoltPredictor,
    LastSamplePredictor,
    RobustMpcPredictor,
)
from novacron_sdk.prediction.interface import BandwidthPredictor
from novacron_sdk.testing.predictor import PredictorContract


class TestLastSampleContract(PredictorContract):
    @pytest.fixture
    def predictor(self) -> BandwidthPredictor:
        return LastSamplePredictor()


class TestRobustMpcContract(PredictorContract):
    @pytest.fixture
    def predictor(self) -> BandwidthPredictor:
        return RobustMpcPredictor()


class TestHoltContract(PredictorContract):
    @pytest.fixture
    def predictor(self) -> BandwidthPredictor:
        return HoltPredictor()


class TestLearnedContract(PredictorContract):
    @pytest.fixture
    def predictor(self) -> BandwidthPredictor:
        return LearnedPredictor()
