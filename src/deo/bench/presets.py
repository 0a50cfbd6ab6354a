"""Named benchmark presets: which tasks, at which size, with which optimizers and seeds.

    quick               every task at reduced size, every optimizer, 1 seed (~10 min, 2 CPUs)
    paper-small         the paper's small GPT setting, 20000 iterations (GPU recommended)
    paper-complex       the paper's complex GPT setting, 20000 iterations (GPU recommended)
    ablation-f          DEO-AdamW with probe interval f in {5, 10, 20}
    sweep-alpha         DEO-AdamW with alpha in {0, 1, 2, 5, 10}
    sweep-displacement  DEO-AdamW with dR in {1e-3, 3e-3, 1e-2, 3e-2}
    spikes              a spike-prone GPT (high lr, no warm-up, beta2 0.999), 3 seeds
    policies-saddle     the saddle suite: every policy beyond the paper, the recommended
                        configuration (and the two frozen before it), the oracle and PGD, on
                        SGD and Adam, 3 seeds
    policies-spikes     the spike-prone GPT: AdamW, the paper's DEO, the recommended DEO and
                        the policies, 3 seeds
    policies-small      the paper's small GPT for 2000 iterations, same optimizers, 3 seeds
    policies-complex    the paper's complex GPT for 2000 iterations (GPU): AdamW, the
                        recommended, the second and first frozen and the paper's DEO
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from .lm import CharLM
from .optimizers import FIRST_FROZEN, NAMES, RECOMMENDED, SECOND_FROZEN, recommended
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
        """Optimizer by optimizer (in the preset's order, the references first), so a bench
        cut short holds every seed of the first optimizers rather than one seed of each."""
        return [(task, optimizer, seed) for optimizer in self.optimizers
                for task in self.tasks for seed in range(seeds or self.seeds)]


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


def policy_optimizers(base: str, *, oracle: bool = False,
                      every_policy: bool = True) -> tuple[str, ...]:
    """Issue 7 on ``base``: the base, the recommended configuration (the third frozen) and the
    two frozen before it, the paper's DEO, each policy alone (``every_policy=False``: the
    curvature-gated alpha and the hybrid only, for the slow LM settings), and on small
    problems the oracle with the recommended settings."""
    ritz = f"deo-{base}-ritz"
    names = (base, recommended(base), recommended(base, SECOND_FROZEN),
             recommended(base, FIRST_FROZEN), f"deo-{base}",
             f"{ritz}:alpha_rule=curvature", f"{ritz}:trigger=spike")
    if every_policy:
        names += (f"{ritz}:interval_rule=angle", f"{ritz}:alpha=0,escape_step=0.25")
    if oracle:
        names += (f"deo-oracle-{base}:{RECOMMENDED}",)
    return names


def _spiky_lm(data: str | None, **kwargs) -> Callable[[], Task]:
    return _lm(data, name="gpt-spikes", preset="small", steps=3000, lr=1e-2, warmup=0,
               min_lr=1e-2, betas=(0.9, 0.999), **kwargs)


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
        return Preset(name, [_spiky_lm(data)], LM_OPTIMIZERS, seeds=3,
                      description="high lr, no warm-up, beta2 = 0.999; 3 seeds")
    if name == "policies-saddle":
        return Preset(name, [QuadraticSaddle, MatrixSensing, MonkeySaddle, DeepLinear],
                      (*policy_optimizers("sgd", oracle=True),
                       *policy_optimizers("adam", oracle=True), "pgd"),
                      seeds=3, description="issue 7 policies on the saddle suite; 3 seeds")
    lm_policies = policy_optimizers("adamw", every_policy=False)
    if name == "policies-spikes":
        return Preset(name, [_spiky_lm(data)], lm_policies, seeds=3,
                      description="issue 7 policies, spike-prone GPT; 3 seeds")
    if name in ("policies-small", "policies-complex"):
        size = name.split("-")[1]
        return Preset(name, [_lm(data, name=f"gpt-{size}-2k", preset=size, steps=2000)],
                      lm_policies if size == "small" else lm_policies[:5], seeds=3,
                      description=f"issue 7 policies, the paper's {size} GPT, 2000 iterations")
    raise ValueError(f"preset: unknown {name!r}; expected one of {list(PRESETS)}")


PRESETS = ("quick", "paper-small", "paper-complex", "ablation-f", "sweep-alpha",
           "sweep-displacement", "spikes", "policies-saddle", "policies-spikes", "policies-small",
           "policies-complex")
