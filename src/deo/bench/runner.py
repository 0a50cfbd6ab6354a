"""Run (task, optimizer, seed) combinations and append one record per finished run.

Every run goes through ``run_one``: the same loop, the same closure, for every optimizer.
``run_bench`` appends each finished run to ``results.jsonl`` (flushed and fsynced), so an
interrupted bench keeps every finished run and ``resume=True`` skips them. A run in
progress writes a checkpoint every ``checkpoint_every`` steps (run_checkpoint.py), and
``resume=True`` continues it from there, bit for bit.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import pickle
import resource
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from ..optimizer import DEO
from . import run_checkpoint
from .denormals import check_flush_denormal, denormals_flushed, note_flushing
from .files import ensure_writable_folder, folder_lock
from .optimizers import build_optimizer, parse_optimizer
from .oracle import OracleDEO
from .stability import spike_share, spike_steps
from .task import (
    RESULTS_FILE,
    RunRecord,
    Task,
    read_results,
    run_key,
    spike_indices,
)

CHECKPOINT_EVERY = 1000  # steps between checkpoints of a run in progress


def run_one(task: Task, optimizer: str, seed: int, *, preset: str = "", device: str = "cpu",
            progress: bool = True, checkpoint: Path | None = None,
            checkpoint_every: int = CHECKPOINT_EVERY) -> RunRecord:
    """Train ``task`` with ``optimizer`` from ``seed``; never raises on divergence.

    ``checkpoint``: a file to write the run's progress to every ``checkpoint_every`` steps;
    if it exists, the run continues from it (the caller deletes it once the record is kept).
    Whether the process flushes denormal floats is checked and recorded (denormals.py).
    """
    if not (isinstance(checkpoint_every, int) and checkpoint_every >= 1):
        raise ValueError(f"checkpoint_every: expected an integer >= 1, got {checkpoint_every!r}")
    flushed = denormals_flushed()
    device = torch.device(device)
    task.setup(seed, device)
    spec = parse_optimizer(optimizer)
    max_grad_norm = spec.remedy.get("max_grad_norm", task.max_grad_norm)
    warmup = int(spec.remedy.get("warmup_fraction", 0.0) * task.steps)  # a remedy's warm-up
    groups = task.param_groups()
    if spec.remedy.get("decay_every_tensor"):  # the authors' rows: one group, all decayed
        groups = [{"params": [p for g in groups for p in g["params"]],
                   "weight_decay": max(g.get("weight_decay", 0.0) for g in groups)}]
    opt, spec = build_optimizer(optimizer, groups, lr=task.lr,
                                base_overrides=getattr(task, "base_overrides", None),
                                displacement=task.deo_displacement,
                                max_grad_norm=max_grad_norm)
    if spec.needs_create_graph:
        task.enable_double_backward()
    record = RunRecord(task.name, optimizer, seed, preset,
                       {"task": task.config(), "optimizer": _describe(opt)})
    params = [p for g in opt.param_groups for p in g["params"]]
    scales = [g.get("lr_scale", 1.0) for g in opt.param_groups]
    record_every = max(1, task.steps // 2000)
    losses: list[float] = []
    norms: list[float] = []  # the main pass's gradient norm, every step
    peak_rss = _resident_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start, elapsed_before, peak_device = 0, 0.0, 0
    if checkpoint is not None and checkpoint.exists():
        resumed = run_checkpoint.load(checkpoint, record.key, task, opt)
        start, elapsed_before, peak_rss = resumed.step, resumed.elapsed, resumed.peak_rss
        peak_device = resumed.peak_device
        record, losses, norms = resumed.record, resumed.losses, resumed.norms
    note_flushing(record.config, flushed, start)
    started = time.perf_counter()
    bar = _progress(task.steps, f"{task.name} {optimizer} s{seed}", progress, initial=start)
    for step in range(start, task.steps):
        ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
        for group, scale in zip(opt.param_groups, scales):
            group["lr"] = task.lr_at(step) * scale * ramp
        loss_fn = task.loss_fn(step)
        calls = []

        def closure(loss_fn=loss_fn, calls=calls):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn()
            loss.backward(create_graph=spec.needs_create_graph)
            if not calls:  # the main pass (DEO's displaced passes call it again)
                norms.append(_grad_norm(params))
            calls.append(None)
            return loss

        with warnings.catch_warnings():  # SophiaH's create_graph: grads are reset every step
            warnings.filterwarnings("ignore", message="Using backward.. with create_graph=True")
            if isinstance(opt, OracleDEO):  # its exact Hessian needs the loss without backward
                loss = opt.step(closure, loss_fn=loss_fn)
            elif isinstance(opt, DEO):  # DEO clips inside, after its finite difference
                loss = opt.step(closure)
            else:
                loss = closure()
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                opt.step()
        value = float(loss.detach())
        losses.append(value)
        if isinstance(opt, DEO) and len(calls) > 1:  # a probe step: C was just measured
            record.curvature.append([step, float(opt.curvature)])
        if step % record_every == 0:
            record.train_loss.append([step, value])
            record.grad_norm.append([step, norms[-1]])
        if record.escape_step is None and task.escape_threshold is not None \
                and value < task.escape_threshold:
            record.escape_step = step
            # every gradient so far: the main passes (this one included), probes and trials
            record.escape_evaluations = step + 1 + (
                int(opt.stats["extra_gradients"]) if isinstance(opt, DEO) else 0)
            if task.stop_on_escape:  # the saddle suite counts the escape, not the rest
                bar.update(1)
                break
        if not math.isfinite(value):
            record.status = "diverged"
            break
        if (step + 1) % task.eval_every == 0 or step + 1 == task.steps:
            _evaluate(task, opt, step + 1, record)
        if step % 10 == 0 or (step + 1) % task.eval_every == 0:
            peak_rss = max(peak_rss, _resident_bytes())
        if checkpoint is not None and (step + 1) % checkpoint_every == 0 \
                and step + 1 < task.steps:
            elapsed = elapsed_before + time.perf_counter() - started
            if device.type == "cuda":
                peak_device = max(peak_device, int(torch.cuda.max_memory_allocated(device)))
            run_checkpoint.save(checkpoint, run_checkpoint.Progress(
                step + 1, record, losses, norms, elapsed, peak_rss, peak_device), task, opt)
        bar.update(1)
    bar.close()
    record.wall_time = elapsed_before + time.perf_counter() - started
    record.seconds_per_step = record.wall_time / max(1, len(losses))
    # each rule once per series (the OLMo one costs ~1 s on 40000 steps); scores from steps
    record.spike_steps = {"2x": spike_indices(losses), "olmo_loss": spike_steps(losses),
                          "olmo_grad_norm": spike_steps(norms)}
    record.spikes = len(record.spike_steps["2x"])
    record.spike_score_loss = _finite_or_none(spike_share(record.spike_steps["olmo_loss"], losses))
    record.spike_score_grad_norm = _finite_or_none(
        spike_share(record.spike_steps["olmo_grad_norm"], norms))
    record.gradient_evaluations = len(losses) + (
        int(opt.stats["extra_gradients"]) if isinstance(opt, DEO) else 0)
    record.peak_memory_bytes = max(peak_device, int(torch.cuda.max_memory_allocated(device))) \
        if device.type == "cuda" else peak_rss
    tail = losses[-max(1, len(losses) // 10):]
    record.final = {**(record.evals[-1] if record.evals else {}),
                    "train_loss": sum(tail) / len(tail)}
    record.final.pop("step", None)
    return record


def _grad_norm(params: list[torch.Tensor]) -> float:
    grads = [p.grad.detach() for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))) \
        if grads else 0.0


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _evaluate(task: Task, opt, step: int, record: RunRecord) -> None:
    record.evals.append({"step": step, **task.evaluate()})
    if isinstance(opt, DEO):
        stats = opt.stats
        record.deo.append({"step": step, **{k: float(stats[k]) for k in
                                            ("curvature", "angle", "grad_share",
                                             "extra_gradients", "inconsistent_probes", "escapes",
                                             "escape_trials")}})


def run_bench(runs: Iterable[tuple[Callable[[], Task], str, int]], out_dir: str | Path, *,
              preset: str = "", device: str = "cpu", resume: bool = False,
              progress: bool = True, workers: int = 1,
              checkpoint_every: int = CHECKPOINT_EVERY,
              flush_denormal: bool = False) -> list[dict]:
    """Run each (task factory, optimizer, seed) not yet in out_dir/results.jsonl.

    ``workers`` > 1 runs that many at a time in separate processes (each with its share of
    the CPU threads; on one GPU they share it). This process alone writes results.jsonl, one
    record as each run finishes, so an interruption keeps every finished run either way.
    Each run in progress keeps a checkpoint in out_dir/checkpoints/ (every
    ``checkpoint_every`` steps), deleted once its record is written; ``resume=True`` skips
    the finished runs and continues the unfinished ones from their checkpoints.
    ``flush_denormal``: runs go to worker processes (one if ``workers`` is 1) that treat
    denormal floats as zero on the CPU from their start (denormals.py).
    """
    if not (isinstance(checkpoint_every, int) and checkpoint_every >= 1):
        raise ValueError(f"checkpoint_every: expected an integer >= 1, got {checkpoint_every!r}")
    check_flush_denormal(flush_denormal)
    out_dir = ensure_writable_folder(out_dir, "--out")
    with folder_lock(out_dir):  # a second bench on the same folder stops here
        return _run_locked(list(runs), out_dir, preset, device, resume, progress, workers,
                           checkpoint_every, flush_denormal)


def _run_locked(runs, out_dir: Path, preset: str, device: str, resume: bool, progress: bool,
                workers: int, checkpoint_every: int, flush_denormal: bool) -> list[dict]:
    path = out_dir / RESULTS_FILE
    done = finished_keys(path)
    unfinished = run_checkpoint.unfinished(out_dir)
    if (done or unfinished) and not resume:
        raise FileExistsError(f"{out_dir} already holds {len(done)} finished runs and "
                              f"{len(unfinished)} unfinished ones; pass --resume to skip the "
                              f"first, continue the second and run the rest, or choose "
                              f"another --out")
    todo, checked = [], set()
    for make_task, optimizer, seed in runs:
        task = make_task()
        key = run_key(task.name, optimizer, seed)
        if key in done:  # and a checkpoint left by a crash after its record was written
            run_checkpoint.remove(run_checkpoint.checkpoint_path(out_dir, key))
            continue
        if task.name not in checked:  # bad data fails here, not in every run
            task.check()
            checked.add(task.name)
        todo.append((make_task, optimizer, seed))
    records = []

    def keep(record: dict) -> None:  # the record first: a crash in between loses nothing
        records.append(record)
        append_record(path, record)
        if is_finished(record):  # an error run retries
            run_checkpoint.remove(run_checkpoint.checkpoint_path(out_dir, record["key"]))

    if workers <= 1 and not flush_denormal:  # flushing is set in a fresh worker, below
        for make_task, optimizer, seed in todo:
            keep(_run_and_record(make_task, optimizer, seed, preset, device, progress,
                                 out_dir, checkpoint_every))
        return records
    why = "workers > 1" if workers > 1 else "flush_denormal"
    for make_task, _, _ in todo:
        try:
            pickle.dumps(make_task)
        except (pickle.PicklingError, AttributeError, TypeError) as err:
            raise ValueError(f"{why} sends each task factory to another process, but "
                             f"{make_task!r} cannot be pickled ({err}); use a class or a "
                             f"functools.partial of one"
                             f"{', or workers=1' if workers > 1 else ''}") from err
    threads = threads_per_worker(workers)
    bars = progress and workers <= 1  # one worker shows its bars, as this process would
    context = multiprocessing.get_context("spawn")  # no forked CUDA state
    with ProcessPoolExecutor(max(1, workers), mp_context=context, initializer=_start_worker,
                             initargs=(threads, os.getpid(), flush_denormal)) as pool:
        futures = [pool.submit(_run_and_record, make_task, optimizer, seed, preset, device,
                               bars, out_dir, checkpoint_every)
                   for make_task, optimizer, seed in todo]
        for future in as_completed(futures):
            keep(future.result())
    return records


def threads_per_worker(workers: int) -> int:
    """torch threads per bench worker: the CPUs shared out, or this process's count for one
    worker, which then runs as this process would."""
    return torch.get_num_threads() if workers <= 1 else max(1, (os.cpu_count() or 1) // workers)


def _start_worker(threads: int, bench_pid: int, flush_denormal: bool) -> None:
    """A worker's setup: denormals flushed or not before torch starts a thread (so that
    every thread inherits it), ``threads`` torch threads, and a watchdog that ends the worker
    once the bench process ``bench_pid`` is gone. A killed bench (SIGTERM, SIGKILL, a crash) would
    otherwise leave each worker finishing its run for nothing, since only the bench writes
    records, holding a core and rewriting the checkpoint a resumed bench reads."""
    torch.set_flush_denormal(flush_denormal)
    torch.set_num_threads(threads)
    threading.Thread(target=_exit_when_orphaned, args=(bench_pid,), daemon=True,
                     name="deo-bench-watchdog").start()


def _exit_when_orphaned(bench_pid: int, every: float = 1.0) -> None:
    """Exit this process as soon as its parent is no longer ``bench_pid`` (an orphan is
    adopted by another process). os._exit: no cleanup that could wait on the dead bench; the
    last checkpoint, written atomically, stays for --resume."""
    while os.getppid() == bench_pid:
        time.sleep(every)
    os._exit(1)


def _run_and_record(make_task, optimizer: str, seed: int, preset: str, device: str,
                    progress: bool, out_dir: Path, checkpoint_every: int) -> dict:
    """One run's record as JSON; a run that raises is recorded as an error, not raised."""
    task = make_task()
    checkpoint = run_checkpoint.checkpoint_path(out_dir, run_key(task.name, optimizer, seed))
    try:
        return run_one(task, optimizer, seed, preset=preset, device=device, progress=progress,
                       checkpoint=checkpoint, checkpoint_every=checkpoint_every).to_json()
    except Exception as err:  # one broken run must not stop the bench: record it
        failed = RunRecord(task.name, optimizer, seed, preset, {"task": task.config()},
                           status=f"error: {type(err).__name__}: {err}"[:500])
        print(f"deo bench: {failed.key} failed: {failed.status}", file=sys.stderr)
        return failed.to_json()


def finished_keys(path: Path) -> set[str]:
    """Keys of the finished runs in ``path``: torn lines, lines that are no run record and
    runs that raised are not."""
    if not path.exists():
        return set()
    records, _, _ = read_results(path)
    return {r["key"] for r in records if is_finished(r)}


def is_finished(record: dict) -> bool:
    """Whether a record is a finished run (diverged included), not a run that raised."""
    return not str(record.get("status", "ok")).startswith("error")


def append_record(path: Path, record: dict) -> None:
    """Append one JSON line, flushed and fsynced: a crash later cannot take it back."""
    with path.open("a+b") as sink:
        sink.seek(0, os.SEEK_END)
        if sink.tell() > 0:
            sink.seek(-1, os.SEEK_END)
            if sink.read(1) != b"\n":  # a torn line from a killed run stays on its own line
                sink.write(b"\n")
        sink.write((json.dumps(record) + "\n").encode())
        sink.flush()
        os.fsync(sink.fileno())


def _describe(opt) -> dict:
    if isinstance(opt, DEO):
        return {"class": type(opt).__name__, "base": type(opt.base).__name__, **opt.settings()}
    return {"class": type(opt).__name__}


def _resident_bytes() -> int:
    """The process's resident set now (Linux); elsewhere its peak so far (ru_maxrss)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)


def _progress(total: int, description: str, enabled: bool, initial: int = 0):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress bars are a nicety; the bench runs without them
        enabled = False
    if not enabled:
        return _NoBar()
    # a resumed run's bar starts where its checkpoint left off
    return tqdm(total=total, initial=initial, desc=description, leave=False, dynamic_ncols=True)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass
