"""`deo estimator`: ritz must find v_min of a real (tiny) GPT's Hessian; Lanczos is the judge."""

import json

import pytest

from deo.bench.estimator import EstimatorConfig, run_estimator
from deo.cli import main

TINY = EstimatorConfig(model_overrides={"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16},
                   train_steps=20, batch_size=4, lr=3e-3, warmup=5, evaluations=40)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("probe") / "probe.json"
    return run_estimator(TINY, out=out, log=lambda line: None), out


def test_ritz_finds_the_minimum_curvature_direction_and_oja_default_does_not(report):
    result, _ = report
    rules = {r["rule"]: r for r in result["rules"]}
    assert result["lambda_min"] < 0
    ritz, oja = rules["ritz"], rules["oja"]
    assert ritz["evaluations_to_target"] is not None and ritz["cos_v_min"] >= 0.95
    assert ritz["curvature_exact"] == pytest.approx(result["lambda_min"], rel=0.05)
    assert oja["evaluations_to_target"] is None and oja["cos_v_min"] < 0.5


def test_no_direction_has_curvature_below_lambda_min(report):
    result, _ = report
    for rule in result["rules"]:
        assert rule["evaluations"] == TINY.evaluations  # the budget is counted exactly
        for point in rule["trace"]:  # a Rayleigh quotient is never below lambda_min
            assert point["curvature_exact"] >= result["lambda_min"] - 1e-3 * abs(
                result["lambda_min"])


def test_json_report_round_trips(report):
    result, out = report
    saved = json.loads(out.read_text())
    assert saved["lambda_min"] == result["lambda_min"]
    assert [r["rule"] for r in saved["rules"]] == ["ritz", "oja"]
    assert not list(out.parent.glob("*.tmp"))  # written atomically, no temporary left


def test_estimator_command_reports_a_missing_data_file(tmp_path, capsys):
    assert main(["estimator", "--data", str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["estimator", "--rules", "newton"],
                                  ["estimator", "--evaluations", "0"]])
def test_estimator_command_rejects_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "expected" in capsys.readouterr().err


def test_tracking_appends_a_ground_truth_record_per_checkpoint(tmp_path):
    from deo.bench.tracking import TrackConfig, median_ratio, track_training

    config = TrackConfig(model_overrides=TINY.model_overrides, steps=30, every=10, batch_size=4,
                         eval_batch_size=32)
    out = tmp_path / "track.jsonl"
    records = track_training(config, out, log=lambda line: None)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["config"]["every"] == 10 and lines[1:] == records
    assert [r["step"] for r in records] == [10, 20, 30]
    for r in records:  # a Rayleigh quotient lies inside the Lanczos spectrum
        assert r["lambda_min"] - 1e-2 <= r["curvature_eval"] <= r["lambda_max"] + 1e-2
        assert 0.0 <= r["cos_v_min"] <= 1.0
        assert r["ratio"] == pytest.approx(r["curvature_eval"] / r["lambda_min"])
    assert median_ratio(records) == sorted(r["ratio"] for r in records)[1]
