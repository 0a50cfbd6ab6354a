"""deo bench's runner, optimizer names, resume and error paths."""

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import deo
from deo.bench.optimizers import NAMES, build_optimizer, parse_optimizer
from deo.bench.runner import finished_keys, run_bench, run_one
from deo.bench.task import RESULTS_FILE as RESULTS
from deo.bench.task import Task, count_spikes
from deo.cli import main


class Bowl(Task):
    """0.5 |x - 1|^2: tiny, deterministic, escape threshold 0.1."""

    name = "bowl"
    steps = 20
    eval_every = 5
    lr = 0.1
    escape_threshold = 0.1

    def setup(self, seed, device):
        self._x = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64, device=device))

    def param_groups(self):
        return [{"params": [self._x]}]

    def loss_fn(self, step):
        return lambda: 0.5 * ((self._x - 1.0) ** 2).sum()

    def evaluate(self):
        return {"loss": float(0.5 * ((self._x.detach() - 1.0) ** 2).sum())}


def test_optimizer_names_parse_with_options():
    spec = parse_optimizer("deo-adamw-ritz:interval=5,alpha=1.5")
    assert (spec.base, spec.rotation, spec.options) == ("adamw", "ritz",
                                                         {"interval": 5, "alpha": 1.5})
    assert parse_optimizer("deo-sgd").rotation == "oja"
    assert parse_optimizer("pgd").rotation is None
    with pytest.raises(ValueError, match="unknown name 'adamax'"):
        parse_optimizer("adamax")
    with pytest.raises(ValueError, match="for DEO variants only"):
        parse_optimizer("adamw:alpha=1")
    with pytest.raises(ValueError, match="keys"):
        parse_optimizer("deo-adamw:momentum=0.9")


@pytest.mark.parametrize("name", NAMES)
def test_every_optimizer_takes_steps(name):
    pytest.importorskip("pytorch_optimizer")
    record = run_one(Bowl(), name, seed=0, progress=False)
    assert record.status == "ok" and len(record.train_loss) == 20
    is_deo = name.startswith("deo-")
    if not is_deo:  # alpha = 5 reverses the gradient along N: on a convex bowl that ascends
        assert record.final["loss"] < 1.5  # started at 1.5
    assert bool(record.deo) == is_deo
    assert record.gradient_evaluations == 20 + (record.deo[-1]["extra_gradients"] if is_deo else 0)


def test_deo_settings_reach_the_optimizer():
    task = Bowl()
    task.setup(0, torch.device("cpu"))
    opt, _ = build_optimizer("deo-adamw-ritz:interval=5,alpha=0", task.param_groups(), lr=0.1,
                             max_grad_norm=1.0)
    assert isinstance(opt, deo.DEO) and opt.interval == 5 and opt.alpha == 0.0
    assert opt.rotation == "ritz" and opt.max_grad_norm == 1.0
    assert isinstance(opt.base, torch.optim.AdamW)


def test_escape_step_and_spikes_are_measured():
    record = run_one(Bowl(), "sgd", seed=0, progress=False)
    losses = [loss for _, loss in record.train_loss]
    first_below = next(i for i, loss in enumerate(losses) if loss < 0.1)
    assert record.escape_step == first_below
    assert count_spikes([1.0] * 100 + [1.9, 2.1, 1.0]) == 1  # 2.1 >= 2 x mean(previous 100)
    assert count_spikes([1.0] * 100 + [5.0, 5.0]) == 2
    assert count_spikes([-1.0] * 100 + [-0.5]) == 0  # no spikes below zero
    # a window of exact zeros after large losses has mean 0 and no spike; a running sum
    # kept ~1e-17 of their round-off and counted one
    rng = random.Random(0)
    assert count_spikes([100 * rng.random() for _ in range(100)] + [0.0] * 100 + [29.8]) == 0
    assert count_spikes([1.0] * 100 + [math.inf]) == 0  # divergence is not a spike
    assert count_spikes([1.0] * 100 + [3.0, math.nan, 3.0]) == 1  # scored up to divergence


def runs(counter):
    def make():
        counter.append(1)
        return Bowl()
    return [(make, "sgd", 0), (make, "deo-sgd-ritz", 0), (make, "sgd", 1)]


def test_results_are_appended_and_resume_skips_finished_runs(tmp_path):
    made = []
    run_bench(runs(made)[:2], tmp_path, progress=False)
    lines = [json.loads(line) for line in (tmp_path / RESULTS).read_text().splitlines()]
    assert [r["key"] for r in lines] == ["bowl|sgd|0", "bowl|deo-sgd-ritz|0"]
    with pytest.raises(FileExistsError, match="--resume"):
        run_bench(runs(made), tmp_path, progress=False)
    # a run killed mid-write leaves a torn line: it is ignored and the next record still lands
    with (tmp_path / RESULTS).open("a") as sink:
        sink.write('{"key": "bowl|sgd|1", "tas')
    new = run_bench(runs(made), tmp_path, resume=True, progress=False)
    assert [r["key"] for r in new] == ["bowl|sgd|1"]
    assert finished_keys(tmp_path / RESULTS) == {"bowl|sgd|0", "bowl|deo-sgd-ritz|0",
                                                 "bowl|sgd|1"}
    first = json.loads((tmp_path / RESULTS).read_text().splitlines()[0])
    assert first["final"]["loss"] == lines[0]["final"]["loss"]  # finished runs untouched


def test_bench_command_errors_write_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["bench", "--data", str(tmp_path / "missing.txt"), "--out", str(out)]) == 2
    assert "missing.txt" in capsys.readouterr().err and not out.exists()
    if not torch.cuda.is_available():
        assert main(["bench", "--device", "cuda", "--out", str(out)]) == 2
        assert "CUDA" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit):
        main(["bench", "--preset", "everything", "--out", str(out)])
    assert "expected one of" in capsys.readouterr().err and not out.exists()


class Broken(Bowl):
    name = "broken"

    def loss_fn(self, step):
        raise RuntimeError("no derivative here")


def test_a_run_that_raises_is_recorded_and_the_bench_goes_on(tmp_path, capsys):
    records = run_bench([(Broken, "sgd", 0), (Bowl, "sgd", 0)], tmp_path, progress=False)
    assert records[0]["status"].startswith("error: RuntimeError: no derivative here")
    assert records[1]["status"] == "ok"
    assert "broken|sgd|0 failed" in capsys.readouterr().err
    assert finished_keys(tmp_path / RESULTS) == {"bowl|sgd|0"}  # --resume retries the error


def denormal_times_one() -> float:
    """1e-40 (a float32 denormal) times 1 on this thread: 0.0 where denormals are flushed."""
    return float(torch.tensor([1e-40]) * 1.0)


class DenormalWitness(Bowl):
    """Bowl whose evaluations also say whether the process kept a denormal."""

    def evaluate(self):
        return {**super().evaluate(), "denormal": denormal_times_one()}


def test_flush_denormal_runs_in_a_worker_that_flushes_and_says_so(tmp_path):
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush denormals")
    (plain,) = run_bench([(DenormalWitness, "sgd", 0)], tmp_path / "plain", progress=False)
    (flushed,) = run_bench([(DenormalWitness, "sgd", 0)], tmp_path / "flushed", progress=False,
                           flush_denormal=True)
    assert all(e["denormal"] != 0.0 for e in plain["evals"])
    assert all(e["denormal"] == 0.0 for e in flushed["evals"]) and flushed["evals"]
    assert "flush_denormal_from_step" not in plain["config"]  # earlier records' config as before
    assert flushed["config"]["flush_denormal_from_step"] == 0
    assert flushed["train_loss"] == plain["train_loss"]  # no denormal here: the same numbers
    assert denormal_times_one() != 0.0  # the bench's own process never flushed
    with pytest.raises(ValueError, match="flush_denormal: expected True or False"):
        run_bench([(Bowl, "sgd", 0)], tmp_path / "bad", progress=False, flush_denormal="yes")
    assert not (tmp_path / "bad").exists()


def test_sophia_on_the_gpt_switches_to_double_differentiable_attention():
    pytest.importorskip("pytorch_optimizer")
    from deo.bench.lm import CharLM

    task = CharLM("gpt-tiny", model_overrides={"n_layer": 1, "n_head": 2, "n_embd": 16},
                  block_size=16, batch_size=4, steps=12, eval_every=12, eval_iters=1, warmup=2)
    record = run_one(task, "deo-sophia", seed=0, progress=False)
    assert record.status == "ok" and record.final["loss"] < 10


def test_parallel_workers_record_the_same_runs_as_one_process(tmp_path):
    todo = [(Bowl, "sgd", 0), (Bowl, "deo-sgd-ritz", 0), (Bowl, "sgd", 1)]
    serial = run_bench(todo, tmp_path / "serial", progress=False)
    parallel = run_bench(todo, tmp_path / "parallel", progress=False, workers=2)
    by_key = {r["key"]: r for r in parallel}
    assert sorted(by_key) == sorted(r["key"] for r in serial)
    for record in serial:  # the runs are deterministic: the same losses either way
        assert by_key[record["key"]]["train_loss"] == record["train_loss"]
    assert finished_keys(tmp_path / "parallel" / RESULTS) == set(by_key)


def test_parallel_workers_need_picklable_task_factories(tmp_path):
    with pytest.raises(ValueError, match="workers > 1"):
        run_bench(runs([]), tmp_path, progress=False, workers=2)


ORPHAN_SCRIPT = """
import multiprocessing, os, sys, time
from deo.bench.runner import _start_worker

def worker(bench_pid):
    _start_worker(1, bench_pid, False)
    print(os.getpid(), flush=True)
    time.sleep(120)

if __name__ == "__main__":
    child = multiprocessing.get_context("spawn").Process(target=worker, args=(os.getpid(),))
    child.start()
    time.sleep(120)
"""


def _alive(pid):
    if Path("/proc/self").exists():
        status = Path(f"/proc/{pid}/status")
        return status.exists() and "\tZ" not in status.read_text()  # a zombie has exited
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_a_worker_exits_when_the_bench_that_started_it_is_killed(tmp_path):
    script = tmp_path / "bench.py"
    script.write_text(ORPHAN_SCRIPT)
    bench = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = None
    try:
        worker = int(bench.stdout.readline())  # the watchdog runs from here on
        assert _alive(worker)
        bench.send_signal(signal.SIGKILL)  # no cleanup in the bench can stop the worker
        bench.wait(timeout=10)
        deadline = time.monotonic() + 15
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker), "the orphaned worker kept running"
    finally:
        bench.kill()
        if worker is not None and _alive(worker):
            os.kill(worker, signal.SIGKILL)


def test_records_carry_the_main_pass_gradient_norm_and_the_olmo_spike_scores():
    """alpha=0 DEO takes AdamW's steps bit for bit, so its recorded gradient norms are
    AdamW's only if the displaced passes (every step here) are left out of them."""
    plain = run_one(Bowl(), "adamw", 0, progress=False)
    wrapped = run_one(Bowl(), "deo-adamw:alpha=0,interval=1", 0, progress=False)
    assert len(plain.grad_norm) == Bowl.steps
    assert plain.grad_norm == wrapped.grad_norm
    # |g| = |x - 1| at x = 0 on the first step
    assert plain.grad_norm[0] == [0, pytest.approx(3 ** 0.5)]
    assert plain.spike_score_loss is None  # 20 steps: fewer than the 100 a score needs
    assert plain.spike_steps == {"2x": [], "olmo_loss": [], "olmo_grad_norm": []}
    assert json.loads(json.dumps(plain.to_json()))["spike_score_grad_norm"] is None


@pytest.mark.parametrize("name", ["spam", "stablespam", "stableadamw", "adopt"])
def test_stability_baselines_are_pytorch_optimizers_with_its_defaults_but_the_lr(name):
    from pytorch_optimizer import load_optimizer

    p = torch.nn.Parameter(torch.zeros(3))
    opt, spec = build_optimizer(name, [{"params": [p]}], lr=3e-3)
    reference = load_optimizer(name)([torch.nn.Parameter(torch.zeros(3))], lr=3e-3)
    assert type(opt) is type(reference) and spec.rotation is None
    assert {k: v for k, v in opt.defaults.items()} == reference.defaults
    record = run_one(Bowl(), name, 0, progress=False)
    assert record.status == "ok" and record.final["loss"] < 1.5  # 1.5 at the start


def test_adamw_remedies_change_one_thing_each(monkeypatch):
    spec = parse_optimizer("adamw-clip1")
    assert (spec.base, spec.rotation, spec.remedy) == ("adamw", None, {"max_grad_norm": 1.0})
    p = torch.nn.Parameter(torch.zeros(3))
    opt, _ = build_optimizer("adamw-beta2-0.95", [{"params": [p]}], lr=1e-3)
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)
    with pytest.raises(ValueError, match="DEO variants only"):
        parse_optimizer("adamw-clip1:alpha=1")
    clips = []
    real_clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda params, max_norm: clips.append(max_norm) or real_clip(params,
                                                                                     max_norm))
    run_one(Bowl(), "adamw", 0, progress=False)
    assert clips == []  # the task does not clip
    run_one(Bowl(), "adamw-clip1", 0, progress=False)
    assert clips == [1.0] * Bowl.steps
    # AdamW's first step moves each coordinate by its lr (the moments cancel), from x = 0
    # towards 1: 0.1 without warm-up; 0.05 with 2 warm-up steps of 20 (10%)
    plain = run_one(Bowl(), "adamw", 0, progress=False)
    warm = run_one(Bowl(), "adamw-warmup10", 0, progress=False)
    assert plain.train_loss[1][1] == pytest.approx(0.5 * 3 * 0.9 ** 2)
    assert warm.train_loss[1][1] == pytest.approx(0.5 * 3 * 0.95 ** 2)


def test_deo_records_the_curvature_of_every_probe_step():
    record = run_one(Bowl(), "deo-adamw:interval=4", 0, progress=False)
    assert [step for step, _ in record.curvature] == list(range(0, Bowl.steps, 4))
    # 0.5 |x - 1|^2 has curvature 1 along every direction
    assert all(c == pytest.approx(1.0, rel=1e-6) for _, c in record.curvature)
    assert run_one(Bowl(), "adamw", 0, progress=False).curvature == []


def test_records_name_the_steps_each_spike_rule_counts():
    class Jump(Bowl):  # a loss with one jump at step 250 (independent of x, so grads are 0)
        steps, eval_every = 300, 100

        def loss_fn(self, step):
            level = 10.0 if step == 250 else 1.0 + 0.001 * (step % 7)
            return lambda: level + 0.0 * self._x.sum()

    record = run_one(Jump(), "adamw", 0, progress=False)
    assert record.spike_steps == {"2x": [250], "olmo_loss": [250], "olmo_grad_norm": []}
    assert record.spikes == 1 and record.spike_score_loss == pytest.approx(1 / 200)


def test_the_authors_rows_decay_every_tensor_and_their_deo_adamw_uses_beta2_0999(monkeypatch):
    from deo.bench import runner
    from deo.bench.lm import CharLM
    from deo.bench.presets import build_preset

    built = {}
    real = runner.build_optimizer

    def spy(name, groups, **kwargs):
        opt, spec = real(name, groups, **kwargs)
        built[name] = opt
        return opt, spec

    monkeypatch.setattr(runner, "build_optimizer", spy)
    task = dict(name="lm", steps=2, eval_every=2, eval_iters=1, block_size=8, batch_size=2,
                model_overrides={"n_layer": 1, "n_head": 1, "n_embd": 8})
    for name in ("adam", "adam-authors", "deo-adamw", "deo-adamw-authors"):
        assert run_one(CharLM(**task), name, 0, progress=False).status == "ok"
    decays = {name: sorted({g["weight_decay"] for g in opt.param_groups})
              for name, opt in built.items()}
    assert decays["adam"] == decays["deo-adamw"] == [0.0, 0.1]  # 2-D tensors only
    assert decays["adam-authors"] == decays["deo-adamw-authors"] == [0.1]  # every tensor
    assert type(built["adam-authors"]).__name__ == "Adam"  # coupled weight decay
    assert built["deo-adamw-authors"].param_groups[0]["betas"] == (0.9, 0.999)
    assert built["deo-adamw"].param_groups[0]["betas"] == (0.9, 0.99)
    assert built["deo-adamw-authors"].config.rotation == "oja"
    assert {"adam-authors", "deo-adamw-authors"} <= set(build_preset("paper-small").optimizers)
