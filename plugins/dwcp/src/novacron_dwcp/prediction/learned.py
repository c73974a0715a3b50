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
from itertools import pairwise
from pathlib import Path
from typing import Any, ClassVar, NoReturn

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
    def from_json(cls, data: Any, source: str = "the model file") -> GradientBoostedModel:
        """Build the model from the exported JSON document, checking all of it first.

        Types, array lengths, feature and child indices, the shape of the bound table and
        that every number is finite are checked here, so a corrupt file fails at load time
        with a :class:`ConfigError` naming ``source`` and the bad field, never at predict().
        """
        check = _ModelCheck(source)
        body = check.object(data, "the document")
        if body.get("format") != MODEL_FORMAT or list(body.get("features", [])) != list(
            FEATURE_NAMES
        ):
            msg = (
                f"{source}: model format {body.get('format')!r} or its feature list does not "
                f"match this version ({MODEL_FORMAT}); retrain with scripts/train_predictor.py"
            )
            raise ConfigError(msg)
        trees = tuple(
            check.tree(raw, f"trees[{i}]")
            for i, raw in enumerate(check.array(check.field(body, "trees"), "trees"))
        )
        horizons = check.numbers(check.field(body, "horizons"), "horizons", positive=True)
        if not horizons:
            check.fail("horizons", "is empty; it lists the horizons (s) the trees were trained on")
        lower = check.object(check.field(body, "lower"), "lower")
        coverage = check.number(check.field(lower, "coverage", "lower"), "lower.coverage")
        if not 0 < coverage < 1:
            check.fail("lower.coverage", f"= {coverage} must lie between 0 and 1")
        edges = [
            check.numbers(check.field(lower, name, "lower"), f"lower.{name}", ascending=True)
            for name in ("horizon_edges", "step_edges", "volatility_edges")
        ]
        factors = check.table(check.field(lower, "factors", "lower"), [len(e) + 1 for e in edges])
        training = body.get("training", {})
        return cls(
            baseline=check.number(check.field(body, "baseline"), "baseline"),
            trees=trees,
            min_horizon_s=min(horizons),
            max_horizon_s=max(horizons),
            coverage=coverage,
            horizon_edges=edges[0],
            step_edges=edges[1],
            volatility_edges=edges[2],
            lower_factors=factors,
            metadata=dict(check.object(training, "training")),
        )


class _ModelCheck:
    """Checks of one model document; every failure is a ConfigError naming the file."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> NoReturn:
        msg = (
            f"{self.source}: {where} {problem}; the learned predictor's model file is corrupt "
            "or hand-edited: restore it or retrain with scripts/train_predictor.py"
        )
        raise ConfigError(msg)

    def object(self, raw: Any, where: str) -> Mapping[str, Any]:
        if not isinstance(raw, Mapping):
            self.fail(where, f"must be a JSON object, got {type(raw).__name__}")
        return raw

    def field(self, body: Mapping[str, Any], name: str, parent: str = "") -> Any:
        if name not in body:
            self.fail(f"{parent}.{name}" if parent else name, "is missing")
        return body[name]

    def array(self, raw: Any, where: str) -> list[Any]:
        if not isinstance(raw, list):
            self.fail(where, f"must be a JSON list, got {type(raw).__name__}")
        return raw

    def number(self, raw: Any, where: str) -> float:
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
            self.fail(where, f"must be a finite number, got {raw!r}")
        return float(raw)

    def numbers(
        self, raw: Any, where: str, *, positive: bool = False, ascending: bool = False
    ) -> tuple[float, ...]:
        values = tuple(
            self.number(v, f"{where}[{i}]") for i, v in enumerate(self.array(raw, where))
        )
        if positive and any(v <= 0 for v in values):
            self.fail(where, f"must hold positive numbers, got {list(values)}")
        if ascending and any(b < a for a, b in pairwise(values)):
            self.fail(where, f"must be in ascending order, got {list(values)}")
        return values

    def integers(self, raw: Any, where: str, low: int, high: int) -> tuple[int, ...]:
        values = self.array(raw, where)
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v < high:
                self.fail(f"{where}[{i}]", f"= {v!r} must be an integer in [{low}, {high})")
        return tuple(values)

    def tree(self, raw: Any, where: str) -> Tree:
        body = self.object(raw, where)
        nodes = len(self.array(self.field(body, "value", where), f"{where}.value"))
        if nodes == 0:
            self.fail(f"{where}.value", "is empty; a tree has at least one leaf")
        arrays = {}
        for name in ("feature", "threshold", "left", "right", "value"):
            array = self.array(self.field(body, name, where), f"{where}.{name}")
            if len(array) != nodes:
                self.fail(f"{where}.{name}", f"has {len(array)} items, value has {nodes}")
            arrays[name] = array
        feature = self.integers(arrays["feature"], f"{where}.feature", -1, len(FEATURE_NAMES))
        left = self.integers(arrays["left"], f"{where}.left", 0, nodes)
        right = self.integers(arrays["right"], f"{where}.right", 0, nodes)
        for node, index in enumerate(feature):
            # Children after their parent (as the trainer writes them): no walk can loop.
            if index >= 0 and not (left[node] > node and right[node] > node):
                self.fail(
                    f"{where} node {node}",
                    f"has children {left[node]}, {right[node]}; they must come after the node",
                )
        return Tree(
            feature,
            self.numbers(arrays["threshold"], f"{where}.threshold"),
            left,
            right,
            self.numbers(arrays["value"], f"{where}.value"),
        )

    def table(self, raw: Any, shape: list[int]) -> tuple[tuple[tuple[float, ...], ...], ...]:
        where = "lower.factors"
        rows = self.array(raw, where)
        if len(rows) != shape[0]:
            self.fail(where, f"has {len(rows)} horizon rows, the horizon edges need {shape[0]}")
        table = []
        for h, by_step in enumerate(rows):
            steps = self.array(by_step, f"{where}[{h}]")
            if len(steps) != shape[1]:
                self.fail(f"{where}[{h}]", f"has {len(steps)} step rows, need {shape[1]}")
            cells = []
            for s, cell in enumerate(steps):
                values = self.numbers(cell, f"{where}[{h}][{s}]", positive=True)
                if len(values) != shape[2]:
                    self.fail(
                        f"{where}[{h}][{s}]", f"has {len(values)} volatility bins, need {shape[2]}"
                    )
                cells.append(values)
            table.append(tuple(cells))
        return tuple(table)


@cache
def load_model(path: str | None = None) -> GradientBoostedModel:
    """Load a model file (default: the one shipped in the package); cached per path.

    A file that is not JSON, or whose content is not a valid model, is a ConfigError naming
    the file and what is wrong with it (see :meth:`GradientBoostedModel.from_json`).
    """
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
    return GradientBoostedModel.from_json(data, f"model file {path or DEFAULT_MODEL}")


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
