"""The bench's and the probe's output: checked before the work, locked, free of machine paths."""

import hashlib
import json
import os

import pytest
import torch

from deo.bench import files
from deo.bench.lm import CharLM
from deo.bench.runner import run_bench, run_one
from deo.bench.task import RESULTS_FILE
from deo.cli import main
from test_bench_runner import Bowl


@pytest.fixture
def blocked(tmp_path):
    """A path no process can make a folder at, root included: its parent is a file."""
    parent = tmp_path / "a-file"
    parent.write_text("not a folder")
    return parent / "out"


def refuse_work(monkeypatch):
    """Make the work itself fail loudly: the checks must stop the command before it."""
    def work(*args, **kwargs):
        raise AssertionError("the work started before the output was checked")
    monkeypatch.setattr("deo.bench.estimator.run_estimator", work)
    monkeypatch.setattr("deo.bench.tracking.track_training", work)
    monkeypatch.setattr("deo.bench.runner.run_one", work)


def test_bench_probe_and_track_refuse_an_unwritable_out_before_any_work(blocked, monkeypatch,
                                                                        capsys):
    refuse_work(monkeypatch)
    assert main(["bench", "--out", str(blocked), "--no-progress"]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["estimator", "--out", str(blocked / "probe.json")]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["track", "--out", str(blocked / "track.jsonl")]) == 2
    assert "--out" in capsys.readouterr().err


def test_probe_refuses_a_folder_as_its_output_file(tmp_path, monkeypatch, capsys):
    refuse_work(monkeypatch)
    assert main(["estimator", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_a_second_bench_on_the_same_folder_stops_and_names_the_first(tmp_path):
    with files.folder_lock(tmp_path):
        with pytest.raises(FileExistsError, match=f"in use by another deo bench "
                                                  f"\\(process {os.getpid()}\\)"):
            run_bench([(Bowl, "sgd", 0)], tmp_path, progress=False)
    assert not (tmp_path / RESULTS_FILE).exists()  # it recorded nothing
    assert [r["key"] for r in run_bench([(Bowl, "sgd", 0)], tmp_path, progress=False)] == \
        ["bowl|sgd|0"]  # the lock went with the first bench


def test_the_lock_is_held_while_the_bench_runs(tmp_path):
    class Probing(Bowl):
        def loss_fn(self, step):
            if step == 0:  # a second bench started now must be refused
                with pytest.raises(FileExistsError, match="in use"):
                    with files.folder_lock(tmp_path):
                        pass
            return super().loss_fn(step)

    assert run_bench([(Probing, "sgd", 0)], tmp_path, progress=False)[0]["status"] == "ok"


def test_an_empty_data_file_and_every_past_steps_are_refused_up_front(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    out = tmp_path / "out"
    assert main(["bench", "--data", str(empty), "--out", str(out), "--no-progress"]) == 2
    assert "0 characters" in capsys.readouterr().err
    assert not (out / RESULTS_FILE).exists()  # no run was recorded as an error
    short = tmp_path / "short.txt"
    short.write_text("to be or not to be")
    assert main(["bench", "--data", str(short), "--out", str(out), "--no-progress"]) == 2
    assert "block_size" in capsys.readouterr().err
    assert main(["track", "--out", str(tmp_path / "t.jsonl"), "--steps", "10",
                 "--every", "20"]) == 2
    assert "--every 20 is larger than --steps 10" in capsys.readouterr().err


def test_records_name_the_data_file_by_name_and_hash_not_by_path(tmp_path):
    text = "".join(chr(97 + (i * 7) % 26) for i in range(3000))
    data = tmp_path / "corpus.txt"
    data.write_text(text)
    task = CharLM("tiny-lm", data=str(data), steps=2, eval_every=2, eval_iters=1,
                  batch_size=2, block_size=8, warmup=0,
                  model_overrides={"n_layer": 1, "n_head": 1, "n_embd": 8})
    record = run_one(task, "adamw", 0, progress=False).to_json()
    assert record["config"]["task"]["data"] == "corpus.txt"
    assert record["config"]["task"]["data_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert str(tmp_path) not in json.dumps(record)
    assert torch.isfinite(torch.tensor(record["final"]["loss"]))


def test_committed_results_name_no_path_of_the_machine_that_ran_them():
    """Records name a data file by its name and hash: an absolute path in a committed result
    names a folder of one machine only (and says nothing elsewhere)."""
    import re
    from pathlib import Path

    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    pattern = re.compile(r'"(/(?:work|tmp|home|Users|root|mnt|data)/[^"]*)"')
    found = {}
    for path in sorted(results.rglob("*.json*")):
        hits = pattern.findall(path.read_text(encoding="utf-8", errors="replace"))
        if hits:
            found[str(path.relative_to(results))] = hits[:2]
    assert not found, f"absolute paths in committed results: {found}"
