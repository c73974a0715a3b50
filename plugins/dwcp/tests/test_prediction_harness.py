"""The evaluation harness and ``novacron predict`` on synthetic traces with known answers."""

from __future__ import annotations

import argparse
import json

import pytest

from novacron_dwcp.prediction import hooks
from novacron_dwcp.prediction.cli import COMMAND
from novacron_dwcp.prediction.evaluation import best_of, evaluate, format_table
from novacron_dwcp.prediction.predictors import LastSamplePredictor, RobustMpcPredictor
from novacron_dwcp.prediction.traces import Trace
from novacron_sdk.plugin.registry import Registry


def alternating_trace(n=60):
    """10 and 20 Mbit/s alternating every second."""
    return Trace.from_points("alt", [(i + 1.0, 10e6 if i % 2 == 0 else 20e6) for i in range(n)])


def test_a_constant_trace_is_predicted_exactly_with_full_coverage():
    trace = Trace.from_points("flat", [(i + 1.0, 40e6) for i in range(50)])
    scores = evaluate([trace], {"last": LastSamplePredictor, "mpc": RobustMpcPredictor})
    for score in scores:
        assert score.median_ape == pytest.approx(0.0, abs=1e-12)
        assert score.p90_ape == pytest.approx(0.0, abs=1e-12)
        assert score.coverage == 1.0


def test_last_sample_errors_on_an_alternating_trace_match_the_analysis():
    trace = alternating_trace()
    scores = {s.horizon_s: s for s in evaluate([trace], {"last": LastSamplePredictor})}
    # 1 s ahead the other level comes: predicting 10 for 20 is off by 50 %, 20 for 10 by 100 %.
    one = scores[1.0]
    assert one.median_ape in (pytest.approx(0.5), pytest.approx(1.0))
    assert one.p90_ape == pytest.approx(1.0)
    # Over 10 s the true mean is 15 whatever the phase: both predictions are off by 1/3.
    ten = scores[10.0]
    assert ten.median_ape == pytest.approx(1 / 3)
    assert ten.p90_ape == pytest.approx(1 / 3)
    # Intervals scored: samples ending at t = 5 .. 60 - h (the 5th sample is the first).
    assert one.intervals == (60 - 1) - 5 + 1
    assert ten.intervals == (60 - 10) - 5 + 1


def test_coverage_counts_intervals_at_or_above_the_bound():
    # RobustMPC on the alternating trace: harmonic mean 13.3, errors up to 50 % -> bound 8.9,
    # always below both levels, so every interval is covered.
    scores = evaluate([alternating_trace()], {"mpc": RobustMpcPredictor}, horizons=[1.0])
    assert scores[0].coverage == 1.0
    assert scores[0].claimed_coverage == RobustMpcPredictor().coverage


def test_best_of_and_table():
    scores = evaluate(
        [alternating_trace()], {"last": LastSamplePredictor, "mpc": RobustMpcPredictor}
    )
    best = best_of(scores, ["last", "mpc"], 10.0)
    assert best is not None
    assert best.median_ape == min(s.median_ape for s in scores if s.horizon_s == 10.0)
    table = format_table(scores)
    assert "last" in table
    assert "10s med APE" in table


def run_predict(argv):
    parser = argparse.ArgumentParser()
    COMMAND.configure(parser)
    return COMMAND.run(parser.parse_args(argv))


def test_predict_command_prints_every_predictor_as_json(tmp_path, capsys):
    path = tmp_path / "trace.log"
    path.write_text("".join(f"{i}\t{5 + (i % 3)}\n" for i in range(40)))
    assert run_predict(["--trace", str(path), "--json", "--predictors", "last-sample,holt"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert {(s["predictor"], s["horizon_s"]) for s in scores} == {
        (name, h) for name in ("last-sample", "holt") for h in (1.0, 10.0)
    }


def test_predict_command_shows_progress_on_a_terminal(tmp_path, capsys, monkeypatch):
    """Several traces on a terminal: a progress bar on stderr, the same table on stdout."""
    import sys

    for i in range(3):
        (tmp_path / f"t{i}.log").write_text("".join(f"{j}\t{5 + (j % 3)}\n" for j in range(40)))
    assert run_predict(["--trace", str(tmp_path), "--predictors", "ewma"]) == 0
    plain = capsys.readouterr()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert run_predict(["--trace", str(tmp_path), "--predictors", "ewma"]) == 0
    shown = capsys.readouterr()
    assert shown.out == plain.out
    assert "scoring traces" in shown.err
    assert "scoring traces" not in plain.err


def test_evaluate_reports_each_trace_done():
    trace = Trace.from_points("t", [(float(t), 5e6 + t % 3 * 1e6) for t in range(30)])
    done: list[int] = []
    evaluate([trace, trace], {"last": LastSamplePredictor}, (1.0,), on_trace=done.append)
    assert done == [1, 2]


def test_predict_command_reports_bad_input(tmp_path, capsys):
    path = tmp_path / "broken"
    path.write_text("garbage\n")
    assert run_predict(["--trace", str(path)]) == 2
    assert "expected" in capsys.readouterr().err


def test_predict_command_refuses_a_trace_too_short_to_score(tmp_path, capsys):
    path = tmp_path / "short.log"
    path.write_text("0.0\t2.5\n1.0\t3.0\n")
    assert run_predict(["--trace", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "nan" not in captured.err
    assert f"{path} is too short to score: 2 sample(s) spanning 1 s" in captured.err
    # Warm-up is 5 samples, then 1 s (the shortest horizon): 6 samples 1 s apart.
    assert "e.g. 6 samples 1 s apart" in captured.err


def test_predict_command_counts_the_samples_a_horizon_needs(tmp_path, capsys):
    path = tmp_path / "half-second.log"
    path.write_text("".join(f"{i / 2}\t5\n" for i in range(8)))
    assert run_predict(["--trace", str(path), "--horizons", "4"]) == 2
    assert "e.g. 13 samples 0.5 s apart" in capsys.readouterr().err


def test_a_short_trace_next_to_a_long_one_is_left_out_with_a_warning(tmp_path, capsys):
    long_trace = tmp_path / "long.log"
    long_trace.write_text("".join(f"{i}\t{5 + (i % 3)}\n" for i in range(8)))
    short = tmp_path / "short.log"
    short.write_text("0\t1\n1\t2\n")
    argv = ["--trace", str(long_trace), "--trace", str(short), "--predictors", "last-sample"]
    assert run_predict([*argv, "--json"]) == 0
    captured = capsys.readouterr()
    scores = {s["horizon_s"]: s for s in json.loads(captured.out)}
    assert scores[1.0]["intervals"] == 8 - 5
    assert f"warning: {short} is too short to score" in captured.err
    # 10 s fits in neither trace: its column is empty, and the user is told why.
    assert scores[10.0]["intervals"] == 0
    assert "no trace is long enough for the 10 s horizon" in captured.err


def test_predict_command_names_an_empty_trace_folder(tmp_path, capsys):
    folder = tmp_path / "emptydir"
    folder.mkdir()
    (folder / "README.md").write_text("traces go here\n")
    assert run_predict(["--trace", str(folder)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"folder {folder} holds no trace files" in captured.err


def test_predict_command_names_a_binary_trace(tmp_path, capsys):
    path = tmp_path / "capture.bin"
    path.write_bytes(b"\xd0\xcf\x11\xe0" * 8)
    assert run_predict(["--trace", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path} is not a text trace" in err
    assert "codec" not in err


@pytest.mark.parametrize(
    ("horizons", "message"),
    [
        ("a", "error: --horizons takes comma-separated seconds, e.g. 1,10; got 'a'"),
        ("1,ten", "error: --horizons takes comma-separated seconds, e.g. 1,10; got '1,ten'"),
        ("0,-1", "error: --horizons needs positive numbers, e.g. 1,10; got '0,-1'"),
        ("nan", "error: --horizons needs positive numbers, e.g. 1,10; got 'nan'"),
        (",", "error: --horizons needs positive numbers, e.g. 1,10; got ','"),
    ],
)
def test_predict_command_explains_bad_horizons(tmp_path, capsys, horizons, message):
    path = tmp_path / "trace.log"
    path.write_text("".join(f"{i}\t5\n" for i in range(40)))
    assert run_predict(["--trace", str(path), "--horizons", horizons]) == 2
    assert capsys.readouterr().err == message + "\n"


def test_cli_hook_registers_predict_and_place():
    registry = Registry("cli command")
    hooks.novacron_add_cli_commands(registry)
    assert registry.names() == ["predict", "place"]


def test_predict_trace_example_runs():
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[3] / "examples" / "predict_trace.py"
    result = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "learned" in result.stdout
    assert "next 10 s: mean" in result.stdout


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "cannot read trace"),
        (b"\xd0\xcf\x11\xe0", "is not a text trace"),
    ],
)
def test_predict_trace_example_reports_a_bad_trace_without_a_traceback(tmp_path, content, fragment):
    trace = tmp_path / "trace.log"
    if content is not None:
        trace.write_bytes(content)
    result = _run_example(trace)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ")
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_predict_trace_example_says_when_a_trace_is_too_short_to_score(tmp_path):
    trace = tmp_path / "short.log"
    trace.write_text("0.0\t2.5\n1.0\t3.0\n")
    result = _run_example(trace)
    assert result.returncode == 0, result.stderr
    assert "too short to score" in result.stdout
    assert "nan" not in result.stdout


def test_predict_and_place_run_under_the_novacron_parser(tmp_path, capsys):
    from novacron_dwcp.placement import hooks as placement_hooks
    from novacron_sdk.cli.main import build_parser
    from novacron_sdk.plugin.manager import build_plugin_manager

    plugins = build_plugin_manager(
        autoload=False, plugins=[("dwcp-cli", hooks), ("dwcp-placement", placement_hooks)]
    )
    parser = build_parser(plugins)
    trace = tmp_path / "trace.log"
    trace.write_text("".join(f"{i}\t{8 + (i % 2)}\n" for i in range(30)))
    args = parser.parse_args(["predict", "--trace", str(trace), "--predictors", "robust-mpc"])
    args.plugins = plugins
    assert args._run(args) == 0
    assert "robust-mpc" in capsys.readouterr().out
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("hosts: [{id: a, vcpus: 4, memory_mib: 4096}]\nrequests: [{name: v}]\n")
    args = parser.parse_args(["place", "--cluster", str(cluster)])
    args.plugins = plugins
    assert args._run(args) == 0
    assert capsys.readouterr().out.split() == ["v", "a"]


def _run_example(trace):
    """Run examples/predict_trace.py on ``trace`` in a subprocess."""
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[3] / "examples" / "predict_trace.py"
    return subprocess.run(
        [sys.executable, str(example), str(trace)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
