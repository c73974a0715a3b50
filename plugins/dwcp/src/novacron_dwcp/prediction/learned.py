"""The learned DWCP predictor: gradient-boosted trees shipped as JSON, evaluated in pure Python.

``scripts/train_predictor.py`` trains the trees (scikit-learn) on the training split of the
shared traces and writes ``model/learned_gbt.json``; inference needs neither scikit-learn nor
numpy nor the network. The lower bound is the mean times a residual quantile calibrated on
separate calibration files, per horizon, sampling-step and recent-volatility bin.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from novacron_dwcp.prediction._window import SampleWindow
from novacron_dwcp.prediction.features import FEATURE_NAMES, HISTORY, features, reference_rate
from novacron_sdk.errors import ConfigError
from novacron_sdk.prediction.interface import (
    BandwidthEstimate,
    BandwidthPredictor,
    BandwidthSample,
)

MODEL_FORMAT = "novacron-gbt/2"
DEFAULT_MODEL = "learned_gbt.json"
VOLATILITY = FEATURE_NAMES.index("std5")
"""The feature the lower bound is conditioned on: spread of the last five log-ratios."""
STEADY_SPREAD = 1.02
"""A window whose highest rate is within 2 % of its lowest is a steady link (see predict)."""
STEP = FEATURE_NAMES.index("step_s")
"""The sampling step also selects the bound's row: 1 s and 5 s traces err differently."""


@dataclass(frozen=True)
class Tree:
    """One regression tree in flat arrays; ``feature[i] < 0`` marks leaf ``i``."""

    feature: tuple[int, ...]
    threshold: tuple[float, ...]
    left: tuple[int, ...]
    right: tuple[int, ...]
    value: tuple[float, ...]

    def evaluate(self, row: Sequence[float]) -> float:
        """The leaf value ``row`` falls into (left when ``x <= threshold``)."""
        node = 0
        feature = self.feature
        while feature[node] >= 0:
            node = (
                self.left[node] if row[feature[node]] <= self.threshold[node] else self.right[node]
            )
        return self.value[node]


@dataclass(frozen=True)
class Forest:
    """All trees packed into one set of node arrays, so that a prediction is one tight loop.

    The per-tree method calls cost more than the comparisons (the planner calls ``predict``
    while deciding); the sum is taken in the same order as tree by tree, so it is identical.
    """

    roots: tuple[int, ...]
    feature: tuple[int, ...]
    threshold: tuple[float, ...]
    left: tuple[int, ...]
    right: tuple[int, ...]
    value: tuple[float, ...]

    @classmethod
    def pack(cls, trees: Sequence[Tree]) -> Forest:
        """Concatenate the trees' arrays, shifting child indices by each tree's offset."""
        roots: list[int] = []
        feature: list[int] = []
        threshold: list[float] = []
        left: list[int] = []
        right: list[int] = []
        value: list[float] = []
        for tree in trees:
            offset = len(feature)
            roots.append(offset)
            feature += tree.feature
            threshold += tree.threshold
            left += [offset + i for i in tree.left]
            right += [offset + i for i in tree.right]
            value += tree.value
        return cls(
            tuple(roots), tuple(feature), tuple(threshold), tuple(left), tuple(right), tuple(value)
        )

    def total(self, row: Sequence[float]) -> float:
        """Sum over the trees of the leaf ``row`` falls into."""
        feature, threshold, left, right, value = (
            self.feature,
            self.threshold,
            self.left,
            self.right,
            self.value,
        )
        total = 0.0
        for root in self.roots:
            node = root
            index = feature[node]
            while index >= 0:
                node = left[node] if row[index] <= threshold[node] else right[node]
                index = feature[node]
            total += value[node]
        return total


@dataclass(frozen=True)
class GradientBoostedModel:
    """A boosted tree ensemble plus the calibrated lower-bound table."""

    baseline: float
    trees: tuple[Tree, ...]
    min_horizon_s: float
    max_horizon_s: float
    coverage: float
    horizon_edges: tuple[float, ...]
    step_edges: tuple[float, ...]
    volatility_edges: tuple[float, ...]
    lower_factors: tuple[tuple[tuple[float, ...], ...], ...]
    metadata: Mapping[str, Any]
    forest: Forest = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A derived cache of ``trees``; frozen dataclasses set fields through object.
        object.__setattr__(self, "forest", Forest.pack(self.trees))

    def predict_log_ratio(self, row: Sequence[float]) -> float:
        """Sum of the trees: the predicted log of future mean over the reference rate."""
        return self.baseline + self.forest.total(row)

    def lower_factor(self, horizon_s: float, row: Sequence[float]) -> float:
        """Calibrated quantile of actual / predicted for this horizon, step and volatility."""
        h = bisect_right(self.horizon_edges, horizon_s)
        s = bisect_right(self.step_edges, row[STEP])
        v = bisect_right(self.volatility_edges, row[VOLATILITY])
        return self.lower_factors[h][s][v]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GradientBoostedModel:
        """Build the model from the exported JSON document (validating its format)."""
        if data.get("format") != MODEL_FORMAT or list(data.get("features", [])) != list(
            FEATURE_NAMES
        ):
            msg = (
                f"model format {data.get('format')!r} or its feature list does not match this "
                f"version ({MODEL_FORMAT}); retrain with scripts/train_predictor.py"
            )
            raise ConfigError(msg)
        trees = tuple(
            Tree(
                tuple(t["feature"]),
                tuple(t["threshold"]),
                tuple(t["left"]),
                tuple(t["right"]),
                tuple(t["value"]),
            )
            for t in data["trees"]
        )
        lower = data["lower"]
        return cls(
            baseline=float(data["baseline"]),
            trees=trees,
            min_horizon_s=float(min(data["horizons"])),
            max_horizon_s=float(max(data["horizons"])),
            coverage=float(lower["coverage"]),
            horizon_edges=tuple(lower["horizon_edges"]),
            step_edges=tuple(lower["step_edges"]),
            volatility_edges=tuple(lower["volatility_edges"]),
            lower_factors=tuple(
                tuple(tuple(cell) for cell in by_step) for by_step in lower["factors"]
            ),
            metadata=dict(data.get("training", {})),
        )


@cache
def load_model(path: str | None = None) -> GradientBoostedModel:
    """Load a model file (default: the one shipped in the package); cached per path."""
    try:
        if path is None:
            text = resources.files("novacron_dwcp.prediction.model").joinpath(DEFAULT_MODEL)
            raw = text.read_text()
        else:
            raw = Path(path).read_text()
        data = json.loads(raw)
    except (OSError, ValueError) as exc:
        msg = f"cannot load the learned predictor's model {path or DEFAULT_MODEL!r}: {exc}"
        raise ConfigError(msg) from exc
    return GradientBoostedModel.from_json(data)


class LearnedPredictor(BandwidthPredictor):
    """Gradient-boosted trees over features of the last 60 samples.

    Settings: ``model`` (path to another exported model file).
    """

    name: ClassVar[str] = "learned"

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        model = self.settings.get("model")
        self.model = load_model(None if model is None else str(model))
        self.window = SampleWindow(HISTORY)

    def observe(self, samples: Sequence[BandwidthSample]) -> None:
        """Add measurements, oldest first."""
        for sample in samples:
            self.window.add(sample)

    def predict(self, horizon_s: float) -> BandwidthEstimate | None:
        """Predicted mean and calibrated lower bound; horizons outside training are clamped."""
        if not self.window.count:
            return None
        rates = self.window.rates()
        horizon = min(max(horizon_s, self.model.min_horizon_s), self.model.max_horizon_s)
        reference = reference_rate(rates)
        row = features(rates, self.window.step_s, horizon)
        if max(rates) <= STEADY_SPREAD * min(rates):
            # No trace in the training data is this steady (4 of 175,396 training rows), so
            # the trees would extrapolate; a link that has not moved is predicted not to move.
            mean = sum(rates) / len(rates)
        else:
            mean = reference * math.exp(self.model.predict_log_ratio(row))
        factor = self.model.lower_factor(horizon, row)
        return BandwidthEstimate(
            horizon_s=horizon_s,
            mean_bps=mean,
            lower_bps=mean * min(factor, 1.0),
            coverage=self.model.coverage,
            predictor=self.name,
            samples=self.window.count,
        )
