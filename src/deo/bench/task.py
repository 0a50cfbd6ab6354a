"""What every benchmark task provides, and what one run of it records.

A task owns its model, its data and its schedule; the runner (runner.py) owns the optimizer
and the loop, so every optimizer meets every task through the same code path:

    task.setup(seed, device)
    opt = build_optimizer(name, task.param_groups(), lr=task.lr, ...)
    for step in range(task.steps):
        lr = task.lr_at(step)               # written into every param group (times its scale)
        loss_fn = task.loss_fn(step)        # the SAME batch every time it is called
        closure: zero_grad, loss_fn(), backward, return loss
        opt.step(closure)                   # DEO calls it twice on probe steps
        every task.eval_every steps: task.evaluate() -> {"metric": float, ...}

One run's record, one line of results.jsonl (RunRecord.to_json):

    key          "task|optimizer|seed", what --resume skips
    task, optimizer, seed, preset
    config       the task's and the optimizer's settings (plain JSON)
    train_loss   [[step, loss], ...] every ``record_every`` steps (all steps for short runs)
    evals        [{"step": s, **metrics}, ...]; metrics include "loss" (the task's main
                 loss on held-out data, or the objective for saddle problems)
    deo          [{"step": s, "curvature", "angle", "grad_share", "extra_gradients",
                  "inconsistent_probes", "escapes", "escape_trials"}, ...] or []
    final        {**last evaluation's metrics, "train_loss": mean of the last 10% of steps}
    escape_step  first step whose loss fell below task.escape_threshold, or None
    escape_evaluations  the gradient evaluations up to and including that step (DEO's probes
                 and escape trials included), or None
    spikes       count of steps with loss >= 2x the (positive) mean of the previous 100 steps
    grad_norm    [[step, |g|], ...] like train_loss: the main pass's gradient norm, before
                 any correction or clipping
    curvature    DEO runs: [[step, C], ...] at every probe step that measured one (the
                 curvature along N after the probe; for an early-warning read-out)
    spike_score_loss, spike_score_grad_norm
                 OLMo 2's spike score of every step's loss and gradient norm (stability.py:
                 the share of steps >= 7 sigma above the mean of the previous 1000); None
                 where too few steps were scored
    spike_steps  {"2x": [...], "olmo_loss": [...], "olmo_grad_norm": [...]}: the steps each
                 rule counts (for lead times against DEO's curvature read-out)
    status       "ok", "diverged" (non-finite loss; the run stops there) or "error: ..." (the
                 run raised; --resume runs it again)
    wall_time, seconds_per_step, gradient_evaluations
    peak_memory_bytes  CUDA: torch.cuda.max_memory_allocated; CPU: the largest resident set
                 size sampled during the run (every eval and every 10 steps; Linux /proc)
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .stability import finite_length

RESULTS_FILE = "results.jsonl"  # in the bench's output folder: one RunRecord per line
SPIKE_FACTOR = 2.0  # a spike: loss >= SPIKE_FACTOR x the mean of the previous SPIKE_WINDOW
SPIKE_WINDOW = 100


class Task:
    """Base class: subclasses set the attributes and implement the four methods."""

    name: str = "task"
    steps: int = 100
    eval_every: int = 10
    lr: float = 1e-3
    max_grad_norm: float | None = None
    escape_threshold: float | None = None  # saddle tasks: "escaped" once loss < this
    stop_on_escape: bool = False  # end the run at the escape step (the saddle suite)
    deo_displacement: float | None = None  # None: DEO's default, 10 x lr

    def setup(self, seed: int, device: torch.device) -> None:
        raise NotImplementedError

    def param_groups(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def loss_fn(self, step: int) -> Callable[[], torch.Tensor]:
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        raise NotImplementedError

    def lr_at(self, step: int) -> float:
        return self.lr

    def enable_double_backward(self) -> None:
        """Make the model twice differentiable (Sophia's Hessian estimate needs it)."""

    def check(self) -> None:
        """Raise ValueError (or FileNotFoundError) if the task cannot run at all, before any
        run of it starts: bad data, for instance."""

    def config(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if _is_plain(v)}

    def state_dict(self) -> dict[str, Any]:
        """What a run in progress needs of the task to continue exactly (run_checkpoint.py):
        the state of every module, generator and tensor it holds (models, the data order,
        parameters of the small problems). Built by ``setup``, so a resumed run calls
        ``setup(seed, device)`` first and then ``load_state_dict``."""
        state: dict[str, Any] = {}
        for name, value in vars(self).items():
            if isinstance(value, torch.nn.Module):
                state[name] = value.state_dict()
            elif isinstance(value, torch.Generator):
                state[name] = value.get_state()
            elif _is_tensors(value):
                state[name] = [t.detach().clone() for t in _as_list(value)]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``'s values in place (an optimizer built on this task's
        parameters keeps pointing at them)."""
        ours = self.state_dict()
        if set(state) != set(ours):
            raise ValueError(f"task {self.name!r}: the checkpoint holds {sorted(state)}, this "
                             f"task {sorted(ours)}: a checkpoint of another task")
        with torch.no_grad():
            for name, saved in state.items():
                value = getattr(self, name)
                if isinstance(value, torch.nn.Module):
                    value.load_state_dict(saved)
                elif isinstance(value, torch.Generator):
                    value.set_state(saved)
                else:
                    for target, source in zip(_as_list(value), saved, strict=True):
                        target.copy_(source)


@dataclass
class RunRecord:
    task: str
    optimizer: str
    seed: int
    preset: str
    config: dict[str, Any]
    train_loss: list[list[float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    deo: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    escape_step: int | None = None
    escape_evaluations: int | None = None
    spikes: int = 0
    grad_norm: list[list[float]] = field(default_factory=list)
    curvature: list[list[float]] = field(default_factory=list)
    spike_score_loss: float | None = None
    spike_score_grad_norm: float | None = None
    spike_steps: dict[str, list[int]] = field(default_factory=dict)
    status: str = "ok"
    wall_time: float = 0.0
    seconds_per_step: float = 0.0
    peak_memory_bytes: int = 0
    gradient_evaluations: int = 0

    @property
    def key(self) -> str:
        return run_key(self.task, self.optimizer, self.seed)

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, **asdict(self)}


def run_key(task: str, optimizer: str, seed: int) -> str:
    return f"{task}|{optimizer}|{seed}"


RECORD_FIELDS = ("task", "optimizer", "seed")


def read_results(path: Path) -> tuple[list[dict[str, Any]], list[int], list[int]]:
    """The run records of a results.jsonl, and the numbers of its torn lines and of its lines
    of other JSON.

    A line that is not valid JSON is a record torn by a bench killed mid-write; valid JSON that
    is not a run record (a number, a list, a dict without task, optimizer and seed) was written
    by something else. Both are skipped, the second kind with a warning; the bench and the
    report read the file through this one function, so they agree on what it holds.
    """
    records, torn, foreign = [], [], []
    text = path.read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            torn.append(number)
            continue
        if not (isinstance(record, dict) and all(k in record for k in RECORD_FIELDS)):
            warnings.warn(f"{path}:{number}: not a run record (a JSON object with "
                          f"{', '.join(RECORD_FIELDS)}), skipped", RuntimeWarning, stacklevel=2)
            foreign.append(number)
            continue
        record.setdefault("key", run_key(record["task"], record["optimizer"], record["seed"]))
        records.append(record)
    return records, torn, foreign


def spike_indices(losses: list[float], factor: float = SPIKE_FACTOR,
                  window: int = SPIKE_WINDOW) -> list[int]:
    """Indices of losses >= factor x the mean of the ``window`` losses before them.

    Defined for positive losses (cross-entropy, squared error); a window whose mean is not
    positive (the saddle problems go below zero) has no spikes. A non-finite loss ends the
    scored part, as for the OLMo score: a diverged run counts its spikes up to divergence.
    Each window's mean is summed afresh: a running sum keeps the round-off of a loss of ~100
    long after it left, more than a whole window of the slingshot's ~1e-9 losses.
    """
    finite = finite_length(losses)
    if finite <= window:
        return []
    x = torch.tensor(losses[:finite], dtype=torch.float64)
    means = x.unfold(0, window, 1)[:-1].mean(dim=1)  # means[k]: the window before k + window
    hit = (means > 0) & (x[window:] >= factor * means)
    return (hit.nonzero().flatten() + window).tolist()


def count_spikes(losses: list[float], factor: float = SPIKE_FACTOR,
                 window: int = SPIKE_WINDOW) -> int:
    return len(spike_indices(losses, factor, window))


def _is_tensors(value: Any) -> bool:
    return isinstance(value, torch.Tensor) or (
        isinstance(value, (list, tuple)) and bool(value)
        and all(isinstance(v, torch.Tensor) for v in value))


def _as_list(value: Any) -> list[torch.Tensor]:
    return [value] if isinstance(value, torch.Tensor) else list(value)


def _is_plain(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool, type(None))) or (
        isinstance(value, (list, tuple)) and all(_is_plain(v) for v in value))
