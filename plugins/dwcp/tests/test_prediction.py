"""DWCP predictors, the trace reader and the file split, on inputs whose answers are known."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from novacron_dwcp.prediction import hooks
from novacron_dwcp.prediction.features import FEATURE_NAMES, HISTORY, features
from novacron_dwcp.prediction.learned import MODEL_FORMAT, LearnedPredictor, load_model
from novacron_dwcp.prediction.predictors import (
    HoltPredictor,
    LastSamplePredictor,
    RobustMpcPredictor,
)
from novacron_dwcp.prediction.traces import Trace, files_in_split, read_trace, split_of
from novacron_sdk.errors import ConfigError
from novacron_sdk.plugin.registry import Registry
from novacron_sdk.prediction.interface import BandwidthSample


def samples(values, step=1.0):
    return [
        BandwidthSample(t=(i + 1) * step, bits_per_second=v, duration_s=step)
        for i, v in enumerate(values)
    ]


# --- traces ---------------------------------------------------------------------------------


def test_read_trace_converts_megabits_and_derives_durations(tmp_path):
    path = tmp_path / "t.log"
    path.write_text("0\t1.5\n2\t3\n5\t0\n")
    trace = read_trace(path)
    assert trace.rates == (1.5e6, 3e6, 0.0)
    got = [(s.t, s.duration_s) for s in trace.samples()]
    # The first sample's interval is taken to be as long as the next step.
    assert got == [(0.0, 2.0), (2.0, 2.0), (5.0, 3.0)]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("0\tx\n1\t2\n", "expected"),
        ("0\t1\n0\t2\n", "does not increase"),
        ("0\t-1\n1\t1\n", "negative"),
    ],
)
def test_read_trace_rejects_bad_lines(tmp_path, text, fragment):
    path = tmp_path / "bad"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        read_trace(path)


def test_read_trace_names_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read trace"):
        read_trace(tmp_path / "absent")


def test_read_trace_names_a_binary_file_and_the_format(tmp_path):
    path = tmp_path / "capture.pcap"
    path.write_bytes(b"\xd0\xcf\x11\xe0\x00\x01")
    with pytest.raises(ConfigError) as caught:
        read_trace(path)
    message = str(caught.value)
    assert str(path) in message
    assert "not a text trace" in message
    assert "time in s" in message
    assert "Mbit/s" in message
    assert "codec" not in message


@pytest.mark.parametrize("text", ["", "# only a comment\n", "0\t1\n"])
def test_read_trace_names_a_file_with_fewer_than_two_samples(tmp_path, text):
    path = tmp_path / "short.log"
    path.write_text(text)
    with pytest.raises(ConfigError, match="at least 2 lines") as caught:
        read_trace(path)
    assert str(path) in str(caught.value)


def test_trace_mean_integrates_the_piecewise_constant_rate():
    # Rate 10 on (0, 1], 20 on (1, 2], 40 on (2, 4].
    trace = Trace.from_points("x", [(1.0, 10.0), (2.0, 20.0), (4.0, 40.0)])
    assert trace.mean(0.0, 1.0) == pytest.approx(10.0)
    assert trace.mean(0.5, 1.5) == pytest.approx(15.0)
    assert trace.mean(1.0, 4.0) == pytest.approx((20 + 2 * 40) / 3)


def test_split_is_by_file_deterministic_and_covers_every_file(tmp_path):
    names = [f"trace_{i}_http---x" for i in range(20)] + [f"bus.{i}.log" for i in range(15)]
    for name in names:
        (tmp_path / name).write_text("0\t1\n1\t1\n")
    (tmp_path / "README.md").write_text("not a trace")
    first = {p.name: s for p, s in split_of(sorted(tmp_path.iterdir())).items()}
    again = {p.name: s for p, s in split_of(sorted(tmp_path.iterdir(), reverse=True)).items()}
    assert first == again
    held = files_in_split(tmp_path, "heldout")
    train = files_in_split(tmp_path, "train")
    calibration = files_in_split(tmp_path, "calibration")
    assert {p.name for p in held + train + calibration} == set(names)
    assert not {p.name for p in held} & {p.name for p in train}
    # Each family contributes a fifth of its files to the held-out split.
    assert sum(p.name.startswith("trace_") for p in held) == 4
    assert sum(p.name.endswith(".log") for p in held) == 3


def test_split_of_the_shared_traces_holds_out_a_fifth(prediction_traces_dir):
    split = split_of(sorted(prediction_traces_dir.iterdir()))
    counts = {
        name: list(split.values()).count(name) for name in ("train", "calibration", "heldout")
    }
    assert counts["heldout"] >= len(split) // 5
    assert counts["train"] > counts["heldout"]


# --- predictors -----------------------------------------------------------------------------


def test_last_sample_predicts_the_last_rate_for_every_horizon():
    predictor = LastSamplePredictor()
    predictor.observe(samples([5e6, 7e6, 3e6]))
    assert predictor.predict(1.0).mean_bps == 3e6
    assert predictor.predict(10.0).mean_bps == 3e6


def test_robust_mpc_discounts_the_harmonic_mean_by_its_largest_recent_error():
    values = [10e6, 20e6, 10e6, 20e6, 10e6]
    predictor = RobustMpcPredictor()
    predictor.observe(samples(values))
    # Predictions before samples 2..5 are harmonic means of the samples seen so far.
    errors = []
    for i in range(1, len(values)):
        seen = values[:i]
        prediction = len(seen) / sum(1 / v for v in seen)
        errors.append(abs(prediction - values[i]) / values[i])
    harmonic = len(values) / sum(1 / v for v in values)
    estimate = predictor.predict(1.0)
    assert estimate.mean_bps == pytest.approx(harmonic)
    assert estimate.lower_bps == pytest.approx(harmonic / (1 + max(errors)))


def test_holt_follows_a_ramp_and_honours_the_horizon():
    ramp = [10e6 + i * 1e6 for i in range(40)]
    predictor = HoltPredictor()
    predictor.observe(samples(ramp))
    one, ten = predictor.predict(1.0), predictor.predict(10.0)
    # The true next-second rate is 50 Mbit/s; the 10 s mean would be 54.5 without damping.
    assert one.mean_bps == pytest.approx(50e6, rel=0.05)
    assert ten.mean_bps > one.mean_bps
    assert ten.mean_bps < 54.5e6


def test_online_lower_bound_tracks_the_spread_of_errors():
    calm, jumpy = LastSamplePredictor(), LastSamplePredictor()
    calm.observe(samples([10e6 * (1 + 0.01 * (i % 2)) for i in range(60)]))
    jumpy.observe(samples([10e6 * (1 + 0.5 * (i % 2)) for i in range(60)]))
    calm_gap = 1 - calm.predict(1.0).lower_bps / calm.predict(1.0).mean_bps
    jumpy_gap = 1 - jumpy.predict(1.0).lower_bps / jumpy.predict(1.0).mean_bps
    assert calm_gap < jumpy_gap


def test_samples_out_of_order_are_rejected():
    predictor = HoltPredictor()
    predictor.observe(samples([1e6, 2e6]))
    with pytest.raises(ConfigError, match="oldest first"):
        predictor.observe([BandwidthSample(t=0.5, bits_per_second=1e6)])


@pytest.mark.parametrize("value", [0, -1, "x", True])
def test_bad_settings_are_rejected(value):
    with pytest.raises(ConfigError, match="alpha"):
        HoltPredictor({"alpha": value})


# --- learned --------------------------------------------------------------------------------


def test_shipped_model_matches_this_feature_set_and_is_small():
    model = load_model()
    assert model.trees
    assert model.coverage == 0.9
    path = Path(hooks.__file__).parent / "model" / "learned_gbt.json"
    assert path.stat().st_size < 1_000_000
    assert json.loads(path.read_text())["features"] == list(FEATURE_NAMES)


def test_the_packed_forest_sums_exactly_what_the_trees_give():
    model = load_model()
    for step, horizon, rates in [
        (1.0, 1.0, [3e6, 0.0, 5e6, 8e6, 2e6, 9e6]),
        (5.0, 10.0, [1e6 * (1 + (i % 7)) for i in range(80)]),
        (1.0, 30.0, [50e6 / (1 + i) for i in range(20)]),
    ]:
        row = features(rates, step, horizon)
        by_tree = model.baseline + sum(tree.evaluate(row) for tree in model.trees)
        assert model.predict_log_ratio(row) == by_tree


def test_learned_predictor_honours_the_horizon_on_a_trend():
    predictor = LearnedPredictor()
    predictor.observe(samples([5e6 + i * 0.5e6 for i in range(30)]))
    one, ten = predictor.predict(1.0), predictor.predict(10.0)
    assert one.mean_bps != ten.mean_bps
    assert 0 < one.lower_bps <= one.mean_bps


def test_feature_vector_length_and_horizon_features():
    row = features([1e6] * 10, 2.0, 10.0)
    assert len(row) == len(FEATURE_NAMES)
    assert row[FEATURE_NAMES.index("horizon_s")] == pytest.approx(10.0)
    assert row[FEATURE_NAMES.index("horizon_steps")] == pytest.approx(5.0)
    # A flat history sits exactly at the reference rate, with no spread and no trend.
    for name in ("lag1", "lag10", "mean60", "median5", "ewma0.05", "std30", "slope30"):
        assert row[FEATURE_NAMES.index(name)] == pytest.approx(0.0, abs=1e-12)


def test_window_features_match_hand_computed_statistics():
    # Last five: 1, 2, 4, 8, 16 Mbit/s; harmonic mean 5 / (1 + 1/2 + 1/4 + 1/8 + 1/16) = 80/31.
    rates = [1e6, 2e6, 4e6, 8e6, 16e6]
    row = features(rates, 1.0, 1.0)
    reference = 80e6 / 31
    at = FEATURE_NAMES.index
    assert row[at("lag1")] == pytest.approx(math.log(16e6 / reference))
    assert row[at("lag3")] == pytest.approx(math.log(4e6 / reference))
    assert row[at("mean5")] == pytest.approx(math.log(6.2e6 / reference))
    assert row[at("median5")] == pytest.approx(math.log(4e6 / reference))
    assert row[at("min5")] == pytest.approx(math.log(1e6 / reference))
    assert row[at("q755")] == pytest.approx(math.log(8e6 / reference))
    assert row[at("harmonic5")] == pytest.approx(0.0, abs=1e-12)
    # The log rate rises by log 2 per sample: slope and mean absolute step both say so.
    assert row[at("slope10")] == pytest.approx(math.log(2))
    assert row[at("absdiff10")] == pytest.approx(math.log(2))


def test_features_look_only_at_the_last_history_samples():
    recent = [3e6 + 1e5 * (i % 7) for i in range(HISTORY)]
    assert features([1e6] * 25 + recent, 1.0, 10.0) == features([9e6] * 3 + recent, 1.0, 10.0)


def test_outages_are_counted_against_the_reference():
    row = features([0.0] * 3 + [5e6] * 7, 1.0, 1.0)
    # A zero rate is floored at 1 kbit/s; three of the last ten samples are outages.
    assert row[FEATURE_NAMES.index("outages10")] == pytest.approx(0.3)


def one_leaf_model(tmp_path, log_ratio):
    """A model file whose single tree predicts ``log_ratio`` everywhere.

    Its lower-bound factor encodes its bin: 0.1 * (horizon bin + 1) + 0.01 * (step bin + 1)
    + 0.001 * (volatility bin + 1).
    """
    factors = [
        [[0.1 * (h + 1) + 0.01 * (s + 1) + 0.001 * (v + 1) for v in range(3)] for s in range(2)]
        for h in range(4)
    ]
    document = {
        "format": MODEL_FORMAT,
        "features": list(FEATURE_NAMES),
        "horizons": [1.0, 30.0],
        "baseline": 0.0,
        "trees": [
            {"feature": [-1], "threshold": [0.0], "left": [0], "right": [0], "value": [log_ratio]}
        ],
        "lower": {
            "coverage": 0.9,
            "horizon_edges": [2.0, 5.0, 20.0],
            "step_edges": [3.0],
            "volatility_edges": [0.1, 0.3],
            "factors": factors,
        },
    }
    path = tmp_path / "model.json"
    path.write_text(json.dumps(document))
    return str(path)


def test_the_lower_bound_comes_from_the_horizon_step_and_volatility_bin(tmp_path):
    predictor = LearnedPredictor({"model": one_leaf_model(tmp_path, math.log(0.5))})
    # Five-second steps, a flat-ish history (std of the last five log-ratios below 0.1).
    predictor.observe(samples([10e6, 10.5e6, 10e6, 10.5e6, 10e6, 10.5e6], step=5.0))
    estimate = predictor.predict(10.0)
    reference = 5 / (2 / 10e6 + 3 / 10.5e6)
    assert estimate.mean_bps == pytest.approx(0.5 * reference)
    assert estimate.lower_bps == pytest.approx(estimate.mean_bps * 0.321)
    # One-second steps with a jumpy history fall in the other step row and the top tercile.
    jumpy = LearnedPredictor({"model": one_leaf_model(tmp_path, 0.0)})
    jumpy.observe(samples([10e6, 40e6, 10e6, 40e6, 10e6, 40e6]))
    estimate = jumpy.predict(1.0)
    assert estimate.lower_bps == pytest.approx(estimate.mean_bps * 0.113)


def test_a_steady_link_is_not_extrapolated_by_the_trees(tmp_path):
    # The tree says "halve it"; a link that has not moved at all is predicted to stay put.
    predictor = LearnedPredictor({"model": one_leaf_model(tmp_path, math.log(0.5))})
    predictor.observe(samples([20e6] * 30))
    assert predictor.predict(10.0).mean_bps == pytest.approx(20e6)
    # Within a 5 % spread the trees decide again.
    moving = LearnedPredictor({"model": one_leaf_model(tmp_path, math.log(0.5))})
    moving.observe(samples([20e6, 21e6] * 15))
    assert moving.predict(10.0).mean_bps < 11e6


def test_a_model_file_of_another_format_is_rejected(tmp_path):
    path = tmp_path / "model.json"
    path.write_text(json.dumps({"format": "other", "features": []}))
    with pytest.raises(ConfigError, match="retrain"):
        LearnedPredictor({"model": str(path)})


def test_learned_predictor_runs_without_scikit_learn_or_numpy():
    code = (
        "import sys\n"
        "sys.modules['sklearn'] = None\n"
        "sys.modules['numpy'] = None\n"
        "from novacron_sdk.prediction.interface import BandwidthSample\n"
        "from novacron_dwcp.prediction.learned import LearnedPredictor\n"
        "p = LearnedPredictor()\n"
        "p.observe([BandwidthSample(t=i + 1, bits_per_second=8e6) for i in range(20)])\n"
        "print(p.predict(10.0).mean_bps)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert float(result.stdout) == pytest.approx(8e6, rel=0.05)


def test_hooks_register_lazy_references_that_resolve():
    registry = Registry("predictor")
    hooks.novacron_register_predictors(registry)
    assert set(registry.names()) == {"learned", "last-sample", "robust-mpc", "holt"}
    assert all(isinstance(e.target, str) for e in registry.entries())
    for name in registry.names():
        assert registry.get(name).name == name


def test_the_plugin_manager_finds_the_dwcp_predictors_and_defaults_to_learned():
    from novacron_sdk.plugin.manager import build_plugin_manager

    plugins = build_plugin_manager(autoload=False, plugins=[("dwcp-prediction", hooks)])
    assert plugins.predictors.default_name() == "learned"
    assert {"ewma", "harmonic", "learned", "holt"} <= set(plugins.predictors.names())
    assert {"predict", "place"} <= set(plugins.cli_commands.names())
