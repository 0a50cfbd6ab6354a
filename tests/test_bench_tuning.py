"""Tuned baselines (deo.bench.tuning): the same grid and the same short budget for each, the
best lr chosen from the records, then the full-length run at it."""

import json
import math
from functools import partial

import pytest

from deo.bench.lm import CharLM
from deo.bench.optimizers import parse_optimizer
from deo.bench.runner import run_bench
from deo.bench.task import RESULTS_FILE, read_results
from deo.bench.tuning import (
    LR_FACTORS,
    TUNE_FRACTION,
    choose,
    lr_name,
    tuned_runs,
    tuning_runs,
    tuning_table,
    with_lr,
)
from test_bench_runner import Bowl


def test_a_task_at_another_lr_keeps_its_schedule_shape_on_a_shorter_run():
    make = partial(CharLM, name="lm", steps=100, warmup=10, lr=1e-3, min_lr=1e-4,
                   eval_every=50)
    task = with_lr(make, 3e-3, fraction=0.2, suffix="-tune")
    assert (task.name, task.lr, task.steps, task.warmup, task.eval_every) == \
        ("lm-tune", 3e-3, 20, 2, 20)
    assert task.min_lr == pytest.approx(3e-4)  # the floor scales with the lr
    full = with_lr(make, 3e-3)
    assert (full.name, full.steps, full.warmup) == ("lm", 100, 10)


def record(task, optimizer, loss, status="ok", escape=None, threshold=None):
    return {"task": task, "optimizer": optimizer, "status": status, "escape_step": escape,
            "final": {"loss": loss}, "config": {"task": {"escape_threshold": threshold}}}


def test_the_best_lr_is_the_lowest_short_run_loss_and_ties_go_to_the_tasks_lr():
    grid = [0.1 * f for f in LR_FACTORS]
    records = [record("t-tune", lr_name("sgd", lr), loss)
               for lr, loss in zip(grid, (2.0, 1.5, 1.7, 1.2, math.inf))]
    best, points = choose(records, "t", "sgd", 0.1)
    assert best == pytest.approx(0.3) and len(points) == 5
    records[4]["status"] = "diverged"  # a diverged run never wins, whatever its last loss
    records[4]["final"]["loss"] = 0.0
    assert choose(records, "t", "sgd", 0.1)[0] == pytest.approx(0.3)
    # saddle tasks: the escape step; where nothing escaped, the task's own lr is kept
    saddle = [record("s-tune", lr_name("gd", lr), 0.0, escape=None, threshold=0.5) for lr in grid]
    assert choose(saddle, "s", "gd", 0.1)[0] == pytest.approx(0.1)
    saddle[0]["escape_step"] = 40
    assert choose(saddle, "s", "gd", 0.1)[0] == pytest.approx(0.01)
    assert choose(records[:3], "t", "sgd", 0.1)[0] is None  # the grid is incomplete


def test_tuning_then_the_full_run_at_the_chosen_lr(tmp_path):
    tasks = [Bowl]
    grid = tuning_runs(tasks, ["sgd", "gd"])
    assert len(grid) == 2 * len(LR_FACTORS) and {seed for _, _, seed in grid} == {0}
    run_bench(grid, tmp_path, progress=False)
    records, _, _ = read_results(tmp_path / RESULTS_FILE)
    short = [r for r in records if r["task"] == "bowl-tune"]
    assert len(short) == 10 and all(r["config"]["task"]["steps"] ==
                                    int(Bowl.steps * TUNE_FRACTION) for r in short)
    full = tuned_runs(tasks, ["sgd", "gd"], records, seeds=[0, 1])
    kept = run_bench(full, tmp_path, progress=False, resume=True)
    names = {r["optimizer"] for r in kept}
    best = {name: choose(records, "bowl", name, Bowl.lr)[0] for name in ("sgd", "gd")}
    assert names == {lr_name(name, lr) for name, lr in best.items()}
    for r in kept:  # the full-length run trains at the chosen lr
        assert r["task"] == "bowl" and r["config"]["task"]["lr"] == \
            pytest.approx(best[r["optimizer"].partition("@")[0]])
        assert r["config"]["task"].get("steps", Bowl.steps) == Bowl.steps  # full length
    with pytest.raises(ValueError, match="the grid is incomplete"):
        tuned_runs(tasks, ["adam"], records, seeds=[0])


@pytest.mark.parametrize("name", ["sgd@0.1", "sgd@lr=", "sgd@lr=-1", "sgd@lr=nan"])
def test_a_malformed_lr_suffix_names_the_accepted_form(name):
    with pytest.raises(ValueError, match="expected '<name>@lr=<a float > 0>'"):
        parse_optimizer(name)
    assert parse_optimizer("deo-sgd-ritz:alpha=0@lr=0.01").options == {"alpha": 0}


def test_the_quick_preset_tunes_every_baseline(tmp_path):
    from deo.bench.presets import build_preset

    preset = build_preset("quick")
    assert set(preset.tuned) == {"sgd", "adam", "adamw", "sophia", "pgd"}
    assert set(preset.tuned) <= set(preset.optimizers)
    json.dumps(preset.tuned)


def test_the_bench_command_tunes_first_then_runs_the_preset(tmp_path, monkeypatch):
    from deo import cli
    from deo.bench.presets import Preset

    preset = Preset("quick", [Bowl], ("sgd", "deo-sgd"), tuned=("sgd",))
    monkeypatch.setattr("deo.bench.presets.build_preset", lambda name, data=None: preset)
    assert cli.main(["bench", "--out", str(tmp_path), "--no-progress"]) == 0
    records, _, _ = read_results(tmp_path / RESULTS_FILE)
    by_task = {}
    for r in records:
        by_task.setdefault(r["task"], []).append(r["optimizer"])
    assert len(by_task["bowl-tune"]) == len(LR_FACTORS)
    best = choose(records, "bowl", "sgd", Bowl.lr)[0]
    assert sorted(by_task["bowl"]) == sorted(["sgd", "deo-sgd", lr_name("sgd", best)])
    # a second bench resumes: nothing runs twice
    assert cli.main(["bench", "--out", str(tmp_path), "--no-progress", "--resume"]) == 0
    assert len(read_results(tmp_path / RESULTS_FILE)[0]) == len(records)


def test_the_report_lists_each_grid_and_the_lr_it_chose():
    grid = [0.03 * f for f in LR_FACTORS]  # the task's lr 0.03 is recovered from the grid
    records = [record("t-tune", lr_name("sgd", lr), loss)
               for lr, loss in zip(grid, (2.0, 1.5, 1.7, 1.2, 9.0))]
    records[4]["status"] = "diverged"
    records += [record("t-tune", lr_name("adam", lr), loss)
                for lr, loss in zip(grid[:3], (1.0, 1.1, 1.2))]
    for r in records:
        r["config"]["task"]["lr"] = float(r["optimizer"].partition("@lr=")[2])
    lines = tuning_table(records)
    assert lines[0] == "## Tuned learning rates"
    (sgd,) = [line for line in lines if line.startswith("| t | sgd |")]
    assert sgd == ("| t | sgd | 0.003: 2, 0.009: 1.5, 0.03: 1.7, 0.09: 1.2, 0.3: — "
                   "| **0.09** |")
    (adam,) = [line for line in lines if line.startswith("| t | adam |")]
    assert adam.endswith("| grid incomplete (3 of 5) |")
    assert tuning_table([record("t", "sgd", 1.0)]) == []  # nothing tuned, no section
