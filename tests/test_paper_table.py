"""benchmarks/paper_table.py: the cells from hand-made records, and its published numbers
against design.md's table."""

import importlib.util
import json
import re
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "paper_table.py"


@pytest.fixture(scope="module")
def paper():
    spec = importlib.util.spec_from_file_location("paper_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record(optimizer, final, seed=0, task="gpt-small", status="ok", evals=(2.0, 1.9)):
    return {"task": task, "optimizer": optimizer, "seed": seed, "status": status,
            "final": {"loss": final}, "wall_time": 1800.0, "gradient_evaluations": 20000,
            "evals": [{"step": 250 * (i + 1), "loss": v} for i, v in enumerate(evals)]}


def row_of(lines, name):
    [line] = [line for line in lines if f"| `{name}` |" in line]
    return [part.strip() for part in line.strip("|").split("|")]


def test_a_cell_is_the_mean_and_std_over_finished_seeds_and_says_what_diverged(paper):
    records = [record("adamw", 1.50, 0, evals=(1.6, 1.48)), record("adamw", 1.54, 1),
               record("adamw", float("nan"), 2, status="diverged")]
    _, _, small_published, small, complex_published, complex_ = row_of(paper.table(records),
                                                                       "adamw")
    mean, std = statistics.fmean([1.50, 1.54]), statistics.stdev([1.50, 1.54])
    assert small.startswith(f"**{mean:.4f}** ± {std:.4f} (2 seeds)")
    assert f"min {statistics.fmean([1.48, 1.9]):.4f}" in small
    assert "1 of 3 diverged" in small and "0.50 h" in small
    assert small_published == "1.5430" and complex_published == "1.6435"
    assert complex_ == "missing"


def test_a_tuned_row_takes_the_full_length_run_at_the_chosen_lr_not_the_grid(paper):
    records = [record("sgd@lr=0.01", 2.9, task="gpt-small-tune"),
               record("sgd@lr=0.003", 2.7, task="gpt-small-tune"),
               record("sgd@lr=0.003", 2.5), record("sgd", 2.8),
               record("sgd@lr=0.01", 2.2, task="gpt-complex")]
    row = row_of(paper.table(records), "sgd@lr")
    assert row[3].startswith("**2.5000**") and "lr 0.003" in row[3]
    # the grid's two short runs are the tuned row's cost too, and only the small one had a grid
    assert "lr grid: 2 runs, 40000 grad evals, 1.00 h" in row[3]
    assert row[5].startswith("**2.2000**") and "lr 0.01" in row[5] and "lr grid" not in row[5]
    assert row_of(paper.table(records), "sgd")[3].startswith("**2.8000**")


def test_every_run_diverged(paper):
    records = [record("sophia", float("inf"), status="diverged")]
    assert row_of(paper.table(records), "sophia")[3] == "diverged (1 of 1)"


def test_the_published_numbers_are_design_mds(paper):
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    section = text.split("as published by the authors", 1)[1].split("\n\n", 2)[1]
    rows = {}
    for line in section.splitlines()[2:]:
        label, small, complex_ = (part.strip() for part in line.strip("|").split("|"))
        rows[label] = (float(small), float(complex_))
    assert rows == paper.PUBLISHED
    assert all(row is None or row in paper.PUBLISHED for _, _, row in paper.ROWS)


def test_the_command_writes_the_table_and_refuses_a_folder_without_results(paper, tmp_path,
                                                                         capsys):
    folder = tmp_path / "paper-small"
    folder.mkdir()
    (folder / "results.jsonl").write_text(json.dumps(record("deo-adamw", 1.56)) + "\n")
    out = tmp_path / "table.md"
    assert paper.main([str(folder), "--out", str(out)]) == 0
    assert re.search(r"\| `deo-adamw` \| 1\.5270 \| \*\*1\.5600\*\*", out.read_text())
    assert out.read_text() == capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="folders: .* holds no results.jsonl"):
        paper.main([str(tmp_path)])
