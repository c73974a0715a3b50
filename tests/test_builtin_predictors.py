"""The builtin predictors: the contract suite, plus the formulas each one documents."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from novacron_sdk.builtin.predictors import (
    EWMA_Z,
    EwmaPredictor,
    HarmonicMeanPredictor,
)
from novacron_sdk.errors import NovaCronError
from novacron_sdk.plugin.manager import build_plugin_manager
from novacron_sdk.prediction.interface import BandwidthPredictor, BandwidthSample
from novacron_sdk.testing.predictor import PredictorContract, series


class TestEwmaContract(PredictorContract):
    @pytest.fixture
    def predictor(self) -> BandwidthPredictor:
        return EwmaPredictor()


class TestEwmaFastAlphaContract(PredictorContract):
    @pytest.fixture
    def predictor(self) -> BandwidthPredictor:
        return EwmaPredictor({"alpha": 0.9})


class TestHarmonicContract(PredictorContract):
    @pytest.fixture
    def predictor(self) -> BandwidthPredictor:
        return HarmonicMeanPredictor()


def test_z_gives_a_one_sided_90_percent_bound_under_normality() -> None:
    # z * MAD must equal the 90th-percentile z-score times sigma, with MAD = sigma*sqrt(2/pi).
    assert EWMA_Z * math.sqrt(2 / math.pi) == pytest.approx(1.2815515655446004)


def test_ewma_by_hand() -> None:
    predictor = EwmaPredictor({"alpha": 0.5})
    predictor.observe(series([100.0, 200.0]))
    # mean: 100 -> 150; dev: 50 (half the first sample) -> 0.5*50 + 0.5*|200-100| = 75
    estimate = predictor.predict(3.0)
    assert estimate is not None
    assert estimate.mean_bps == pytest.approx(150.0)
    assert estimate.lower_bps == pytest.approx(max(0.0, 150.0 - EWMA_Z * 75.0))
    assert (estimate.coverage, estimate.samples, estimate.predictor) == (0.9, 2, "ewma")


def test_horizon_does_not_change_the_estimate() -> None:
    predictor = HarmonicMeanPredictor()
    predictor.observe(series([10.0, 20.0, 30.0]))
    short, long = predictor.predict(0.5), predictor.predict(600.0)
    assert short is not None
    assert long is not None
    assert (short.mean_bps, short.lower_bps) == (long.mean_bps, long.lower_bps)


def test_harmonic_mean_of_the_last_five() -> None:
    predictor = HarmonicMeanPredictor()
    predictor.observe(series([1000.0, 1.0, 2.0, 4.0, 4.0, 8.0, 8.0]))
    estimate = predictor.predict(1.0)
    assert estimate is not None
    assert estimate.mean_bps == pytest.approx(5 / (1 / 2 + 1 / 4 + 1 / 4 + 1 / 8 + 1 / 8))
    assert estimate.samples == 5


def test_harmonic_lower_bound_uses_the_worst_recent_error() -> None:
    predictor = HarmonicMeanPredictor()
    predictor.observe(series([100.0]))
    first = predictor.predict(1.0)
    assert first is not None
    assert first.lower_bps == first.mean_bps
    predictor.observe(series([50.0]))  # predicted 100, got 50: error 1.0
    estimate = predictor.predict(1.0)
    assert estimate is not None
    assert estimate.mean_bps == pytest.approx(2 / (1 / 100 + 1 / 50))
    assert estimate.lower_bps == pytest.approx(estimate.mean_bps / 2)


def test_harmonic_forgets_errors_older_than_five_predictions() -> None:
    predictor = HarmonicMeanPredictor()
    predictor.observe(series([100.0, 10.0] + [10.0] * 10))
    estimate = predictor.predict(1.0)
    assert estimate is not None
    assert estimate.lower_bps == pytest.approx(estimate.mean_bps)


@pytest.mark.parametrize("value", [-1.0, float("nan")])
def test_negative_and_nan_samples_are_rejected_by_the_model(value: float) -> None:
    with pytest.raises(ValidationError):
        BandwidthSample(t=1.0, bits_per_second=value)


@pytest.mark.parametrize("cls", [EwmaPredictor, HarmonicMeanPredictor])
def test_infinite_samples_are_rejected(cls: type[BandwidthPredictor]) -> None:
    predictor = cls()
    with pytest.raises(NovaCronError, match="finite"):
        predictor.observe(series([1.0, math.inf]))
    assert predictor.predict(1.0) is None  # nothing of the bad call was kept


@pytest.mark.parametrize("alpha", [0, 1.5, "x", True])
def test_bad_alpha(alpha: object) -> None:
    with pytest.raises(NovaCronError, match="alpha"):
        EwmaPredictor({"alpha": alpha})


def test_registered_names() -> None:
    predictors = build_plugin_manager(autoload=False).predictors
    assert predictors.get("ewma") is EwmaPredictor
    assert predictors.get("harmonic") is HarmonicMeanPredictor
