"""A bench run killed mid-way and resumed ends bit-identical to one that ran through."""

import json
from functools import partial

import pytest
import torch

from deo.bench import run_checkpoint
from deo.bench.lm import CharLM
from deo.bench.runner import _progress, run_bench
from deo.bench.task import RESULTS_FILE, Task, read_results
from deo.bench.vision import DigitsMLP

TINY_GPT = partial(CharLM, name="gpt-tiny", steps=30, eval_every=10, eval_iters=2,
                   block_size=16, batch_size=4, warmup=5,
                   model_overrides={"n_layer": 1, "n_head": 2, "n_embd": 16, "dropout": 0.1})
# what depends on the machine's speed, not on the run
UNTIMED = ("wall_time", "seconds_per_step", "peak_memory_bytes")


def untimed(record: dict) -> str:
    return json.dumps({k: v for k, v in record.items() if k not in UNTIMED}, sort_keys=True)


class Interrupt(BaseException):
    """What a kill looks like to the bench: not an Exception, so no error record is kept."""


def interrupted(make_task, at_step: int):
    """The task of ``make_task`` that stops the process at ``at_step``."""
    def make():
        task = make_task()
        loss_fn = task.loss_fn

        def stopping(step):
            if step == at_step:
                raise Interrupt
            return loss_fn(step)

        task.loss_fn = stopping
        return task
    return make


class Plateau(Task):
    """1e-6 |x|^2 from x = 0: the gradient stays below perturbed GD's threshold, so it
    perturbs every ``wait`` (10) steps, drawing from its own generator each time."""

    name, steps, eval_every, lr = "plateau", 30, 10, 0.1

    def setup(self, seed, device):
        self._x = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))

    def param_groups(self):
        return [{"params": [self._x]}]

    def loss_fn(self, step):
        return lambda: 1e-6 * self._x.square().sum()

    def evaluate(self):
        return {"loss": float(1e-6 * self._x.detach().square().sum())}


CASES = [
    # DEO's probes and Ritz state, dropout (the global RNG) and the data order (a generator)
    (TINY_GPT, "deo-adamw-ritz:interval=3,escape_step=0.25,escape_rule=checked"),
    # the hybrid trigger's running mean of the loss
    (TINY_GPT, "deo-adamw-ritz:trigger=spike"),
    # perturbed GD's counters and its own generator (perturbations at 0, 10, 20)
    (Plateau, "pgd"),
    # per-step minibatches from the seed, a plain torch optimizer
    (partial(DigitsMLP, steps=30, eval_every=10), "adamw"),
]


@pytest.mark.parametrize("make_task, optimizer", CASES,
                         ids=["deo-gpt", "spike-trigger", "pgd", "digits"])
def test_a_killed_run_resumes_bit_identical(tmp_path, make_task, optimizer):
    straight = run_bench([(make_task, optimizer, 0)], tmp_path / "straight", progress=False,
                         checkpoint_every=7)
    out = tmp_path / "killed"
    with pytest.raises(Interrupt):  # killed at step 17: the checkpoint holds step 14
        run_bench([(interrupted(make_task, 17), optimizer, 0)], out, progress=False,
                  checkpoint_every=7)
    (checkpoint,) = run_checkpoint.unfinished(out)
    assert torch.load(checkpoint, weights_only=False)["step"] == 14
    assert not (out / RESULTS_FILE).exists() or not read_results(out / RESULTS_FILE)[0]
    resumed = run_bench([(make_task, optimizer, 0)], out, progress=False, resume=True,
                        checkpoint_every=7)
    (a,), (b,) = straight, resumed
    assert a["status"] == b["status"] == "ok"
    # as JSON: every float to its last bit (repr), NaN included
    assert untimed(a) == untimed(b)
    assert len(b["train_loss"]) == 30  # every step, none twice
    assert run_checkpoint.unfinished(out) == []  # deleted once the record was written
    (kept,), _, _ = read_results(out / RESULTS_FILE)
    assert kept["key"] == b["key"]


def test_an_uninterrupted_run_leaves_no_checkpoint_and_a_restart_needs_resume(tmp_path):
    run_bench([(TINY_GPT, "adamw", 0)], tmp_path, progress=False, checkpoint_every=5)
    assert run_checkpoint.unfinished(tmp_path) == []
    other = tmp_path / "other"
    with pytest.raises(Interrupt):
        run_bench([(interrupted(TINY_GPT, 12), "adamw", 0)], other, progress=False,
                  checkpoint_every=5)
    # a bench without --resume refuses a folder with an unfinished run instead of losing it
    with pytest.raises(FileExistsError, match="0 finished runs and 1 unfinished"):
        run_bench([(TINY_GPT, "adamw", 0)], other, progress=False)


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    with pytest.raises(Interrupt):
        run_bench([(interrupted(TINY_GPT, 12), "adamw", 0)], tmp_path, progress=False,
                  checkpoint_every=5)
    (checkpoint,) = run_checkpoint.unfinished(tmp_path)
    other = run_checkpoint.checkpoint_path(tmp_path, "gpt-tiny|adamw|1")
    checkpoint.rename(other)  # now where seed 1's run looks for its checkpoint
    (record,) = run_bench([(TINY_GPT, "adamw", 1)], tmp_path, progress=False, resume=True)
    assert record["status"].startswith("error: ValueError") and "gpt-tiny|adamw|0" in \
        record["status"]


def test_checkpoint_files_are_distinct_per_run_and_bad_intervals_are_refused(tmp_path):
    keys = ["t|deo-adamw-ritz:alpha=0.5|0", "t|deo-adamw-ritz:alpha=0_5|0", "t|adamw|0"]
    paths = {run_checkpoint.checkpoint_path(tmp_path, key) for key in keys}
    assert len(paths) == 3 and all(p.parent == tmp_path / "checkpoints" for p in paths)
    with pytest.raises(ValueError, match="checkpoint_every: expected an integer >= 1"):
        run_bench([(TINY_GPT, "adamw", 0)], tmp_path, checkpoint_every=0)


def test_the_progress_bar_of_a_resumed_run_starts_where_it_left_off():
    pytest.importorskip("tqdm")
    bar = _progress(100, "run", True, initial=40)
    assert bar.n == 40
    bar.close()


def test_the_bench_command_passes_the_checkpoint_interval(tmp_path, monkeypatch):
    from deo import cli

    seen = {}

    def fake_run_bench(runs, out, **kwargs):
        seen.update(kwargs)
        return []

    monkeypatch.setattr("deo.bench.runner.run_bench", fake_run_bench)
    monkeypatch.setattr("deo.bench.report.write_report", lambda out, title: out)
    assert cli.main(["bench", "--preset", "quick", "--only", "deo-adamw", "--out", str(tmp_path),
                     "--checkpoint-every", "250", "--no-progress"]) == 0
    assert seen["checkpoint_every"] == 250 and seen["flush_denormal"] is False
    assert cli.main(["bench", "--preset", "quick", "--only", "deo-adamw", "--out", str(tmp_path),
                     "--flush-denormal", "--no-progress"]) == 0
    assert seen["flush_denormal"] is True
    with pytest.raises(SystemExit):
        cli.main(["bench", "--checkpoint-every", "0"])
