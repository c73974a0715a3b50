"""The contract every bandwidth predictor must pass: subclass :class:`PredictorContract`.

Example::

    class TestEwmaContract(PredictorContract):
        @pytest.fixture
        def predictor(self) -> BandwidthPredictor:
            return EwmaPredictor()

The fixture must give a fresh predictor per test.
"""

from __future__ import annotations

import random

import pytest

from novacron_sdk.prediction.interface import BandwidthEstimate, BandwidthPredictor, BandwidthSample


def series(values: list[float], *, start: float = 0.0) -> list[BandwidthSample]:
    """One-second samples with the given throughputs, oldest first."""
    return [BandwidthSample(t=start + i + 1, bits_per_second=v) for i, v in enumerate(values)]


def noisy(mean: float, spread: float, n: int, seed: int) -> list[float]:
    """``n`` throughputs uniformly within ``mean * (1 ± spread)``."""
    rng = random.Random(seed)
    return [mean * (1 + rng.uniform(-spread, spread)) for _ in range(n)]


class PredictorContract:
    """Every predictor must pass this. Subclass it and provide a ``predictor`` fixture."""

    def test_none_before_any_sample(self, predictor: BandwidthPredictor) -> None:
        """No data, no estimate."""
        assert predictor.predict(1.0) is None
        predictor.observe([])
        assert predictor.predict(10.0) is None

    def test_constant_series(self, predictor: BandwidthPredictor) -> None:
        """A steady link is predicted within 1 %, with the bound at or below the mean."""
        predictor.observe(series([100e6] * 60))
        estimate = predictor.predict(5.0)
        assert estimate is not None
        assert estimate.mean_bps == pytest.approx(100e6, rel=0.01)
        assert 0 <= estimate.lower_bps <= estimate.mean_bps

    def test_estimate_fields_are_valid(self, predictor: BandwidthPredictor) -> None:
        """Horizon echoed, coverage a probability, predictor named, samples counted."""
        predictor.observe(series(noisy(50e6, 0.5, 30, seed=1)))
        estimate = predictor.predict(2.5)
        assert isinstance(estimate, BandwidthEstimate)
        assert estimate.horizon_s == 2.5
        assert 0 < estimate.coverage <= 1
        assert estimate.predictor == type(predictor).name
        assert 1 <= estimate.samples <= 30
        assert 0 <= estimate.lower_bps <= estimate.mean_bps

    def test_estimate_stays_within_the_observed_range(self, predictor: BandwidthPredictor) -> None:
        """For samples between a and b, the predicted mean is between a and b."""
        values = noisy(80e6, 0.25, 40, seed=2)
        predictor.observe(series(values))
        estimate = predictor.predict(1.0)
        assert estimate is not None
        assert min(values) * 0.99 <= estimate.mean_bps <= max(values) * 1.01

    def test_follows_a_level_change(self, predictor: BandwidthPredictor) -> None:
        """After a drop from 100 to 10 Mbit/s, the estimate ends up near the new level."""
        predictor.observe(series([100e6] * 20))
        predictor.observe(series([10e6] * 40, start=20))
        estimate = predictor.predict(1.0)
        assert estimate is not None
        assert estimate.mean_bps == pytest.approx(10e6, rel=0.05)

    def test_incremental_equals_batch(self, predictor: BandwidthPredictor) -> None:
        """observe() in pieces gives the same estimate as one call with all samples."""
        samples = series(noisy(30e6, 0.4, 25, seed=3))
        predictor.observe(samples)
        whole = predictor.predict(1.0)
        again = type(predictor)(predictor.settings)
        for i in range(0, len(samples), 4):
            again.observe(samples[i : i + 4])
        assert again.predict(1.0) == whole

    def test_zero_throughput_is_accepted(self, predictor: BandwidthPredictor) -> None:
        """A stalled interval (0 bit/s) is a valid sample and never gives a negative bound."""
        predictor.observe(series([10e6, 0.0, 10e6, 0.0]))
        estimate = predictor.predict(1.0)
        assert estimate is not None
        assert 0 <= estimate.lower_bps <= estimate.mean_bps
