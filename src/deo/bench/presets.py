"""Named benchmark presets: which tasks, at which size, with which optimizers and seeds.

    quick               every task at reduced size, every optimizer, 1 seed (~10 min, 2 CPUs)
    paper-small         the paper's small GPT setting, 20000 iterations (GPU recommended)
    paper-complex       the paper's complex GPT setting, 20000 iterations (GPU recommended)
    ablation-f          DEO-AdamW with probe interval f in {5, 10, 20}
    sweep-alpha         DEO-AdamW with alpha in {0, 1, 2, 5, 10}
    sweep-displacement  DEO-AdamW with dR in {1e-3, 3e-3, 1e-2, 3e-2}
    spikes              a spike-prone GPT (high lr, no warm-up, beta2 0.999), 3 seeds
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from .lm import CharLM
from .optimizers import NAMES
from .saddle import DeepLinear, MatrixSensing, MonkeySaddle, QuadraticSaddle
from .task import Task
from .vision import DigitsCNN, DigitsMLP

ALL_OPTIMIZERS = NAMES
LM_OPTIMIZERS = ("adamw", "deo-adamw", "deo-adamw-ritz")


@dataclass
class Preset:
    name: str
    tasks: list[Callable[[], Task]]
    optimizers: tuple[str, ...]
    seeds: int = 1
    description: str = ""

    def runs(self, seeds: int | None = None) -> list[tuple[Callable[[], Task], str, int]]:
        return [(task, optimizer, seed) for task in self.tasks
                for seed in range(seeds or self.seeds) for optimizer in self.optimizers]


def _lm(data: str | None, **kwargs) -> Callable[[], Task]:
    return partial(CharLM, data=data, **kwargs)


def quick_tasks(data: str | None) -> list[Callable[[], Task]]:
    # sized so that all 13 optimizers x 9 tasks finish in about 10 minutes on 2 CPU cores
    tiny_gpt = {"n_layer": 2, "n_head": 2, "n_embd": 32}
    short_lm = {"data": data, "block_size": 32, "batch_size": 8, "steps": 150,
                "eval_every": 50, "eval_iters": 2, "warmup": 15}
    return [
        QuadraticSaddle, MonkeySaddle, DeepLinear, MatrixSensing,
        partial(CharLM, name="gpt-tiny", model_overrides=tiny_gpt, **short_lm),
        partial(CharLM, name="lstm", model="lstm",
                model_overrides={"n_embd": 32, "n_hidden": 64, "n_layers": 1}, **short_lm),
        partial(DigitsMLP, steps=200), partial(DigitsCNN, steps=150),
        partial(CharLM, name="gpt-spikes", model_overrides=tiny_gpt,
                **{**short_lm, "warmup": 0}, lr=1e-2, min_lr=1e-2, betas=(0.9, 0.999)),
    ]


def build_preset(name: str, data: str | None = None) -> Preset:
    if name == "quick":
        return Preset(name, quick_tasks(data), ALL_OPTIMIZERS,
                      description="every task at reduced size, all optimizers, 1 seed")
    if name in ("paper-small", "paper-complex"):
        size = name.split("-")[1]
        return Preset(name, [_lm(data, name=f"gpt-{size}", preset=size)], ALL_OPTIMIZERS,
                      description=f"the paper's {size} setting (design.md, section 4)")
    small = _lm(data, name="gpt-small-2k", steps=2000)
    if name == "ablation-f":
        return Preset(name, [small], ("adamw", *(f"deo-adamw:interval={f}" for f in (5, 10, 20)),
                                      *(f"deo-adamw-ritz:interval={f}" for f in (5, 10, 20))),
                      description="probe interval f in {5, 10, 20}")
    if name == "sweep-alpha":
        return Preset(name, [small], ("adamw", *(f"deo-adamw-ritz:alpha={a}"
                                                 for a in (0, 1, 2, 5, 10))),
                      description="correction strength alpha")
    if name == "sweep-displacement":
        return Preset(name, [small], ("adamw", *(f"deo-adamw-ritz:displacement={d}"
                                                 for d in (1e-3, 3e-3, 1e-2, 3e-2))),
                      description="finite-difference displacement dR")
    if name == "spikes":
        spiky = _lm(data, name="gpt-spikes", preset="small", steps=3000, lr=1e-2, warmup=0,
                    min_lr=1e-2, betas=(0.9, 0.999))
        return Preset(name, [spiky], LM_OPTIMIZERS, seeds=3,
                      description="high lr, no warm-up, beta2 = 0.999; 3 seeds")
    raise ValueError(f"preset: unknown {name!r}; expected one of {list(PRESETS)}")


PRESETS = ("quick", "paper-small", "paper-complex", "ablation-f", "sweep-alpha",
           "sweep-displacement", "spikes")
