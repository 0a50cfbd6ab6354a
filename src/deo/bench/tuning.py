"""Baselines at their own tuned learning rate, with the same tuning budget for each.

The field compares optimizers each at its own tuned learning rate (AlgoPerf, arXiv 2306.07179;
Schmidt et al. 2021, arXiv 2007.01547): one shared lr makes some of them straw men. For each
task of a preset and each optimizer in its ``tuned`` list, ``deo bench`` first runs
``LR_FACTORS`` x the task's lr (5 values on a log grid around it) on a short run (the first
``TUNE_FRACTION`` of the steps, seed 0, the schedule compressed to that length), then the
optimizer at the best of them at full length, under the name ``<optimizer>@lr=<value>``. Every
tuned optimizer gets the same grid and the same short budget, and the tuning runs are counted:
they are records of their own (task ``<task>-tune``) in the same results.jsonl, and the
report lists each grid and the lr it chose. The untuned rows, at the task's shared lr, stay:
they are what the paper did.

The best lr is the lowest final loss of the short run (saddle tasks: the lowest escape
step; a run that diverged or never escaped loses); a tie goes to the lr nearest the task's
own (where no grid point escaped, the task's lr is kept).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

from .task import Task

LR_FACTORS = (0.1, 0.3, 1.0, 3.0, 10.0)
TUNE_FRACTION = 0.2
TUNE_SEED = 0
TUNE_SUFFIX = "-tune"

Run = tuple[Callable[[], Task], str, int]


def with_lr(make_task: Callable[[], Task], lr: float, fraction: float = 1.0,
            suffix: str = "") -> Task:
    """``make_task()`` at ``lr`` (a task's floor ``min_lr`` scaled with it), on the first
    ``fraction`` of its steps, renamed with ``suffix``. A module function, so that a
    ``partial`` of it can be sent to worker processes."""
    task = make_task()
    scale = lr / task.lr
    task.lr = lr
    if hasattr(task, "min_lr"):
        task.min_lr = task.min_lr * scale
    if fraction < 1.0:
        task.steps = max(1, int(task.steps * fraction))
        task.eval_every = min(task.eval_every, task.steps)
        if hasattr(task, "warmup"):
            task.warmup = int(task.warmup * fraction)
    task.name = task.name + suffix
    return task


def tuning_runs(tasks: Iterable[Callable[[], Task]], optimizers: Iterable[str]) -> list[Run]:
    """The short runs of the grid: every task x optimizer x ``LR_FACTORS``, seed 0."""
    runs = []
    for make_task in tasks:
        base_lr = make_task().lr
        for optimizer in optimizers:
            for factor in LR_FACTORS:
                lr = base_lr * factor
                runs.append((partial(with_lr, make_task, lr, TUNE_FRACTION, TUNE_SUFFIX),
                             lr_name(optimizer, lr), TUNE_SEED))
    return runs


def lr_name(optimizer: str, lr: float) -> str:
    """The bench name of ``optimizer`` at ``lr``: '<optimizer>@lr=<value>'."""
    return f"{optimizer}@lr={lr:.3g}"


def choose(records: Iterable[Mapping[str, Any]], task: str, optimizer: str,
           base_lr: float) -> tuple[float | None, list[tuple[float, float]]]:
    """(the best lr of ``optimizer``'s grid on ``task``, [(lr, score), ...] in grid order);
    None while a grid point has no record yet. Score: final loss, or the escape step on a
    saddle task; inf for a run that diverged or never escaped."""
    found = {record["optimizer"]: record for record in records
             if record["task"] == task + TUNE_SUFFIX}
    grid = []
    for factor in LR_FACTORS:
        lr = base_lr * factor
        record = found.get(lr_name(optimizer, lr))
        if record is None:
            return None, grid
        grid.append((lr, _score(record)))
    best = min(grid, key=lambda point: (point[1], abs(math.log(point[0] / base_lr)), point[0]))
    return best[0], grid


def tuned_runs(tasks: Iterable[Callable[[], Task]], optimizers: Iterable[str],
               records: list[Mapping[str, Any]], seeds: Iterable[int]) -> list[Run]:
    """The full-length runs at each optimizer's chosen lr, for every seed."""
    runs = []
    for make_task in tasks:
        task = make_task()
        for optimizer in optimizers:
            lr, _ = choose(records, task.name, optimizer, task.lr)
            if lr is None:
                raise ValueError(f"tuning {optimizer} on {task.name}: the grid is incomplete")
            runs += [(partial(with_lr, make_task, lr), lr_name(optimizer, lr), seed)
                     for seed in seeds]
    return runs


def _score(record: Mapping[str, Any]) -> float:
    escape = record.get("escape_step")
    config_task = (record.get("config") or {}).get("task") or {}
    if config_task.get("escape_threshold") is not None:
        return float(escape) if escape is not None else math.inf
    if record.get("status") != "ok":
        return math.inf
    loss = (record.get("final") or {}).get("loss")
    return float(loss) if isinstance(loss, (int, float)) and math.isfinite(loss) else math.inf


def tuning_table(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """The report's account of the tuning: per task and tuned optimizer, each grid point's
    short-run score and the lr ``choose`` took for the full-length row. Empty without
    tuning records."""
    records = list(records)
    grids: dict[str, list[str]] = {}
    for record in records:
        if record["task"].endswith(TUNE_SUFFIX) and "@lr=" in record["optimizer"]:
            names = grids.setdefault(record["task"].removesuffix(TUNE_SUFFIX), [])
            base = record["optimizer"].partition("@lr=")[0]
            if base not in names:
                names.append(base)
    if not grids:
        return []
    lines = ["## Tuned learning rates", "",
             f"Each tuned baseline ran the same grid, {', '.join(f'{f:g}x' for f in LR_FACTORS)} "
             f"the task's lr, on the first {TUNE_FRACTION:.0%} of the steps (seed {TUNE_SEED}, "
             f"task `<task>{TUNE_SUFFIX}`); its full-length row `<optimizer>@lr=<value>` uses "
             "the best point: the lowest final loss (saddle tasks: the earliest escape; a run "
             "that diverged or never escaped loses), a tie going to the lr nearest the task's.",
             "", "| task | optimizer | short-run score at each lr | chosen lr |",
             "|---|---|---|---|"]
    for task, names in grids.items():
        base_lr = _task_lr(records, task)
        for name in names:
            chosen, grid = choose(records, task, name, base_lr)
            points = ", ".join(f"{lr:.3g}: {'—' if math.isinf(score) else f'{score:.4g}'}"
                               for lr, score in grid)
            verdict = f"**{chosen:.3g}**" if chosen is not None else \
                f"grid incomplete ({len(grid)} of {len(LR_FACTORS)})"
            lines.append(f"| {task} | {name} | {points} | {verdict} |")
    return [*lines, ""]


def _task_lr(records: list[Mapping[str, Any]], task: str) -> float:
    """The task's own lr, recovered from its grid: the exact lrs of the tuning runs (their
    configs) are ``LR_FACTORS`` x it, so it is the candidate lr / factor that explains the
    most of them (factor 1 first among equals)."""
    lrs = {float(((record.get("config") or {}).get("task") or {}).get("lr")
                 or record["optimizer"].partition("@lr=")[2])
           for record in records if record["task"] == task + TUNE_SUFFIX}
    candidates = sorted(LR_FACTORS, key=lambda factor: factor != 1.0)
    return max((lr / factor for factor in candidates for lr in sorted(lrs)),
               key=lambda base: sum(any(math.isclose(lr, base * f, rel_tol=1e-9)
                                        for f in LR_FACTORS) for lr in lrs))
