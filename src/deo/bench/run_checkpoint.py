"""Checkpoints of a run in progress, so a long run survives the end of a session.

``run_one`` writes one every ``checkpoint_every`` steps, to ``OUT/checkpoints/<run>.pt``:
the step reached, the task's state (model, data order: ``Task.state_dict``), the optimizer's
(DEO's included), every RNG the loop draws from (torch's CPU and CUDA generators, Python's,
and any ``torch.Generator`` an optimizer holds, such as perturbed GD's), and the metrics so
far (the record, every step's loss and gradient norm, the wall time spent). The learning
rate is a function of the step (``Task.lr_at``), so there is no scheduler state to keep.

The file is written atomically (a temporary file, flushed, fsynced, renamed over the old
one, the folder fsynced): a run killed while writing leaves the previous checkpoint. A
resumed run continues from the checkpoint bit for bit; the bench deletes it once the run's
record is in results.jsonl.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .task import RunRecord, Task

FOLDER = "checkpoints"  # under the bench's output folder
FORMAT = 1  # bumped when the layout changes: an older checkpoint is refused, not misread


@dataclass
class Progress:
    """What the loop has accumulated by the end of step ``step - 1``: it resumes at ``step``."""

    step: int
    record: RunRecord
    losses: list[float]
    norms: list[float]
    elapsed: float  # seconds of training before this checkpoint
    peak_rss: int
    peak_device: int = 0  # the GPU's peak allocation before it (a resume resets the counter)


def checkpoint_path(out_dir: str | Path, key: str) -> Path:
    """The checkpoint file of the run ``key`` ("task|optimizer|seed") in ``out_dir``: the key
    made a file name (characters other than letters, digits, '.', '=' and '-' become '_'),
    with a hash of the key so two keys never share a file."""
    stem = re.sub(r"[^\w.=-]", "_", key)[:150]
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(out_dir) / FOLDER / f"{stem}-{digest}.pt"


def save(path: Path, progress: Progress, task: Task, opt: torch.optim.Optimizer) -> None:
    """Write the checkpoint atomically (see the module doc)."""
    state = {
        "format": FORMAT,
        "key": progress.record.key,
        "step": progress.step,
        "record": dataclasses.asdict(progress.record),
        "losses": progress.losses,
        "norms": progress.norms,
        "elapsed": progress.elapsed,
        "peak_rss": progress.peak_rss,
        "peak_device": progress.peak_device,
        "task": task.state_dict(),
        "optimizer": opt.state_dict(),
        "optimizer_generators": [g.get_state() for g in _generators(opt)],
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as sink:
        torch.save(state, sink)
        sink.flush()
        os.fsync(sink.fileno())
    os.replace(partial, path)
    _fsync_folder(path.parent)


def load(path: Path, key: str, task: Task, opt: torch.optim.Optimizer) -> Progress:
    """Restore the task, the optimizer and every RNG from ``path`` and return the progress
    to continue from. ``task.setup`` must have run and ``opt`` be built on its parameters."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("format") != FORMAT or state.get("key") != key:
        raise ValueError(f"{path}: a checkpoint of {state.get('key')!r} (format "
                         f"{state.get('format')!r}), not of run {key!r} (format {FORMAT}); "
                         f"delete it to start the run afresh")
    task.load_state_dict(state["task"])
    opt.load_state_dict(state["optimizer"])
    generators = _generators(opt)
    if len(generators) != len(state["optimizer_generators"]):
        raise ValueError(f"{path}: the optimizer held {len(state['optimizer_generators'])} "
                         f"generators, this one {len(generators)}")
    for generator, saved in zip(generators, state["optimizer_generators"]):
        generator.set_state(saved)
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return Progress(step=state["step"], record=RunRecord(**state["record"]),
                    losses=state["losses"], norms=state["norms"], elapsed=state["elapsed"],
                    peak_rss=state["peak_rss"], peak_device=state.get("peak_device", 0))


def remove(path: Path) -> None:
    """Delete a finished run's checkpoint (and a partial write of it)."""
    for stale in (path, path.with_name(path.name + ".partial")):
        stale.unlink(missing_ok=True)


def unfinished(out_dir: str | Path) -> list[Path]:
    """The checkpoints of runs in progress in ``out_dir``."""
    folder = Path(out_dir) / FOLDER
    return sorted(folder.glob("*.pt")) if folder.is_dir() else []


def _generators(opt: Any) -> list[torch.Generator]:
    """The torch.Generators an optimizer holds as attributes (and its base's, for DEO), in
    a fixed order: their states are not in ``state_dict``."""
    found = []
    for owner in (opt, getattr(opt, "base", None)):
        if owner is not None:
            found += [value for _, value in sorted(vars(owner).items())
                      if isinstance(value, torch.Generator)]
    return found


def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a folder; the rename is done either way
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
