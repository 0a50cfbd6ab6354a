"""benchmarks/stability_table.py's LR sensitivity on hand-made records, diverged runs included."""

import importlib.util
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "stability_table.py"


@pytest.fixture(scope="module")
def table():
    spec = importlib.util.spec_from_file_location("stability_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(final, initial=2.0, status="ok"):
    record = {"train_loss": [[0, initial], [10, final]], "status": status, "final": {}}
    if status == "ok":
        record["final"]["loss"] = final
    return record


def test_a_diverged_seed_counts_as_the_initial_loss_in_its_lrs_mean(table):
    by_task = {
        "toy-lr=0.001": {"adamw": [run(0.8), run(0.8), run(0.8)]},
        "toy-lr=0.01": {"adamw": [run(0.5), run(0.5), run(math.inf, status="diverged")]},
    }
    lines, sensitivities = table.sensitivity_tables(by_task)
    # lr 1e-2: (0.5 + 0.5 + 2.0) / 3 = 1.0; sensitivity mean(0.8, 1.0) - 0.8 = 0.1 (counting
    # the whole lr as diverged would give 0.6)
    assert sensitivities["toy"]["adamw"] == pytest.approx(0.1)
    assert "| adamw | 0.800 | 1.000 | 0.100 |" in lines


def test_a_seed_that_ends_above_the_initial_loss_counts_as_one_that_diverged(table):
    bad = {"toy-lr=0.001": {"adamw": [run(0.8)] * 3},
           "toy-lr=0.01": {"adamw": [run(41.6), run(1.0), run(1.0)]}}
    diverged = {"toy-lr=0.001": {"adamw": [run(0.8)] * 3},
                "toy-lr=0.01": {"adamw": [run(math.nan, status="diverged"), run(1.0),
                                          run(1.0)]}}
    # (2.0 + 1.0 + 1.0) / 3 at lr 1e-2 either way, not a mean of 14.5 capped to 2.0
    assert table.sensitivity_tables(bad)[1]["toy"]["adamw"] == pytest.approx(
        table.sensitivity_tables(diverged)[1]["toy"]["adamw"]) == pytest.approx(
        (0.8 + 4.0 / 3) / 2 - 0.8)


def test_a_mean_above_the_initial_loss_is_capped_and_a_missing_lr_leaves_no_value(table):
    by_task = {
        "toy-lr=0.001": {"adamw": [run(1.0)], "sgd": [run(1.5)]},
        "toy-lr=0.01": {"adamw": [run(9.0)]},
    }
    _, sensitivities = table.sensitivity_tables(by_task)
    assert sensitivities["toy"]["adamw"] == pytest.approx((1.0 + 2.0) / 2 - 1.0)
    assert math.isnan(sensitivities["toy"]["sgd"])
