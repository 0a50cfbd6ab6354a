"""Named benchmark presets: which tasks, at which size, with which optimizers and seeds.

``REGISTRY`` (at the end) is the one list of presets: each name with what it runs, its seeds
and its description. ``PRESETS`` (the names, in order, for ``deo bench --preset``) and
``build_preset`` come from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from .lm import CharLM
from .optimizers import (
    AUTHORS_ROWS,
    FIRST_FROZEN,
    NAMES,
    REMEDIES,
    SECOND_FROZEN,
    STABILITY_BASELINES,
    THIRD_FROZEN,
    frozen,
    recommended,
)
from .saddle import DeepLinear, MatrixSensing, MonkeySaddle, QuadraticSaddle
from .task import Task
from .vision import DigitsCNN, DigitsMLP, Slingshot

ALL_OPTIMIZERS = NAMES
# the baselines that the presets with a tuning stage also run at their own tuned lr
TUNED_BASELINES = ("sgd", "adam", "adamw", "sophia", "pgd")
# the paper's table: every optimizer, the rows as the authors' code ran them, and ours
PAPER_OPTIMIZERS = (*NAMES, *AUTHORS_ROWS, recommended("adamw", "saddle"),
                    recommended("adamw", "stability"))
# the quick bench shows what we recommend beside the paper's rule (the report's overview)
QUICK_OPTIMIZERS = (*NAMES, recommended("sgd", "saddle"), recommended("adamw", "stability"))
LM_OPTIMIZERS = ("adamw", "deo-adamw", "deo-adamw-ritz")


@dataclass
class Preset:
    name: str
    tasks: list[Callable[[], Task]]
    optimizers: tuple[str, ...]
    seeds: int = 1
    description: str = ""
    tuned: tuple[str, ...] = ()  # also run at their own tuned lr (tuning.py)

    def runs(self, seeds: int | None = None, first_seed: int = 0,
             only: tuple[str, ...] | None = None) -> list[tuple[Callable[[], Task], str, int]]:
        """Optimizer by optimizer (in the preset's order, the references first), so a bench
        cut short holds every seed of the first optimizers rather than one seed of each.

        ``seeds`` runs per (task, optimizer), seeds ``first_seed, first_seed + 1, ...``
        (fresh seeds for a configuration chosen on the first ones); ``only`` keeps those of
        the preset's optimizers (a ValueError names the accepted ones).
        """
        if first_seed < 0:
            raise ValueError(f"first_seed: expected an integer >= 0, got {first_seed!r}")
        optimizers = self.optimizers
        if only is not None:
            unknown = [name for name in only if name not in optimizers]
            if unknown or not only:
                raise ValueError(f"only: {unknown or 'nothing'} is not among preset "
                                 f"{self.name!r}'s optimizers; expected some of "
                                 f"{list(optimizers)}")
            optimizers = tuple(name for name in optimizers if name in only)
        count = seeds or self.seeds
        return [(task, optimizer, seed) for optimizer in optimizers for task in self.tasks
                for seed in range(first_seed, first_seed + count)]


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
    """The optimizers that judge the policies beyond the paper on ``base``: the base, the
    recommended configuration (the third frozen) and the two frozen before it, the paper's
    DEO, each policy alone (``every_policy=False``: the curvature-gated alpha and the hybrid
    only, for the slow LM settings), and on small problems the oracle with the recommended
    settings."""
    ritz = f"deo-{base}-ritz"
    names = (base, recommended(base), frozen(base, THIRD_FROZEN), frozen(base, SECOND_FROZEN),
             frozen(base, FIRST_FROZEN), f"deo-{base}",
             f"{ritz}:alpha_rule=curvature", f"{ritz}:trigger=spike")
    if every_policy:
        names += (f"{ritz}:interval_rule=angle", f"{ritz}:alpha=0,escape_step=0.25")
    if oracle:
        names += (f"deo-oracle-{base}:{THIRD_FROZEN}",)
    return names


def _spiky_lm(data: str | None, **kwargs) -> Callable[[], Task]:
    return _lm(data, name="gpt-spikes", preset="small", steps=3000, lr=1e-2, warmup=0,
               min_lr=1e-2, betas=(0.9, 0.999), **kwargs)


# What a preset's builder returns for the language tasks' ``data`` (a text file, or None for
# the default corpus): its task factories and its optimizer names.
Runs = tuple[list[Callable[[], Task]], tuple[str, ...]]


def _paper(size: str) -> Callable[[str | None], Runs]:
    def build(data: str | None) -> Runs:
        return [_lm(data, name=f"gpt-{size}", preset=size)], PAPER_OPTIMIZERS
    return build


def _small_2k(data: str | None) -> Callable[[], Task]:
    return _lm(data, name="gpt-small-2k", steps=2000)


def _ablation_f(data: str | None) -> Runs:
    return [_small_2k(data)], ("adamw", *(f"deo-adamw:interval={f}" for f in (5, 10, 20)),
                               *(f"deo-adamw-ritz:interval={f}" for f in (5, 10, 20)))


def _sweep_alpha(data: str | None) -> Runs:
    return [_small_2k(data)], ("adamw", *(f"deo-adamw-ritz:alpha={a}" for a in (0, 1, 2, 5, 10)))


def _sweep_displacement(data: str | None) -> Runs:
    return [_small_2k(data)], ("adamw", *(f"deo-adamw-ritz:displacement={d}"
                                          for d in (1e-3, 3e-3, 1e-2, 3e-2)))


def _spikes(data: str | None) -> Runs:
    return [_spiky_lm(data)], LM_OPTIMIZERS


def _policies_saddle(data: str | None) -> Runs:
    return ([QuadraticSaddle, MatrixSensing, MonkeySaddle, DeepLinear],
            (*policy_optimizers("sgd", oracle=True), *policy_optimizers("adam", oracle=True),
             "pgd"))


def _policies_spikes(data: str | None) -> Runs:
    return [_spiky_lm(data)], policy_optimizers("adamw", every_policy=False)


def _policies_gpt(size: str) -> Callable[[str | None], Runs]:
    def build(data: str | None) -> Runs:
        optimizers = policy_optimizers("adamw", every_policy=False)
        return ([_lm(data, name=f"gpt-{size}-2k", preset=size, steps=2000)],
                optimizers if size == "small" else optimizers[:5])
    return build


def stability_optimizers() -> tuple[str, ...]:
    """The stability presets' contenders: AdamW, AdamW with each standard remedy alone, the
    maintained stability optimizers, DEO as the paper has it (Oja, Ritz, the hybrid trigger),
    the saddle recommendation of the time (the third frozen), the stability recommendation
    (frozen after the slingshot's seeds 0-2, so it is last among the modes there), the damping
    of the maximum-curvature direction, the trust region on the curvature along the update,
    and two read-outs of AdamW itself."""
    return ("adamw", *REMEDIES, *STABILITY_BASELINES, "deo-adamw", "deo-adamw-ritz",
            # the saddle recommendation when these presets were built (the third frozen)
            "deo-adamw-ritz:trigger=spike", frozen("adamw", THIRD_FROZEN),
            "deo-adamw-ritz:target=max,alpha=0.5",
            "deo-adamw-update:alpha=0,step_rule=sharpness", recommended("adamw", "stability"),
            # read-outs: AdamW's own steps bit for bit (alpha 0), with the curvature along
            # v_max or along the update recorded at every probe, for the early warning
            "deo-adamw-ritz:target=max,alpha=0", "deo-adamw-update:alpha=0")


def _stability_lm(data: str | None, name: str, lr: float) -> Callable[[], Task]:
    """The small GPT where AdamW spikes at lr 0.3 (benchmarks/results/stability_search_cpu.md):
    lr held constant, no warm-up, beta2 0.999, eps 1e-8, no clipping, 3000 steps. DEO's
    displacement is 1e-2, the small GPT's usual one: the default 10 x lr would be 3 there."""
    return _lm(data, name=name, preset="small", steps=3000, lr=lr, min_lr=lr, warmup=0,
               betas=(0.9, 0.999), eps=1e-8, max_grad_norm=None, eval_every=500,
               eval_iters=10, deo_displacement=1e-2)


def _stability_gpt(data: str | None) -> Runs:
    return [_stability_lm(data, "gpt-stability", 0.3)], stability_optimizers()


def _stability_slingshot(data: str | None) -> Runs:
    return [Slingshot], stability_optimizers()


# Wortsman et al.'s LR sensitivity needs each contender over a log grid of learning rates
GPT_LR_GRID = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
SLINGSHOT_LR_GRID = (3e-4, 1e-3, 3e-3, 1e-2)
LR_SWEEP_OPTIMIZERS = ("adamw", "adopt", "stableadamw", "spam", recommended("adamw", "stability"),
                       "deo-adamw", "deo-adamw-ritz",
                       "deo-adamw-ritz:target=max,alpha=0.5",
                       "deo-adamw-update:alpha=0,step_rule=sharpness")


def _stability_gpt_lr(data: str | None) -> Runs:
    return ([_stability_lm(data, f"gpt-stability-lr={lr:g}", lr) for lr in GPT_LR_GRID],
            LR_SWEEP_OPTIMIZERS)


def _stability_slingshot_lr(data: str | None) -> Runs:
    return ([partial(Slingshot, lr=lr, name=f"slingshot-lr={lr:g}") for lr in SLINGSHOT_LR_GRID],
            LR_SWEEP_OPTIMIZERS)


@dataclass(frozen=True)
class PresetSpec:
    """One entry of ``REGISTRY``: ``build(data)`` makes the runs (called by build_preset)."""

    build: Callable[[str | None], Runs]
    description: str
    seeds: int = 1
    tuned: tuple[str, ...] = ()  # the baselines that also run at their own tuned lr


REGISTRY: dict[str, PresetSpec] = {
    "quick": PresetSpec(
        lambda data: (quick_tasks(data), QUICK_OPTIMIZERS),
        "every task at reduced size, every optimizer and the recommended configurations, the "
        "baselines also at their own tuned lr, 1 seed (~5 min, 2 CPUs)",
        tuned=TUNED_BASELINES),
    "paper-small": PresetSpec(
        _paper("small"), "the paper's small GPT setting (design.md, section 4), 20000 "
                         "iterations, every optimizer, the baselines also at their own tuned "
                         "lr (GPU recommended)", tuned=TUNED_BASELINES),
    "paper-complex": PresetSpec(
        _paper("complex"), "the paper's complex GPT setting (design.md, section 4), 20000 "
                           "iterations, every optimizer, the baselines also at their own "
                           "tuned lr (GPU recommended)", tuned=TUNED_BASELINES),
    "ablation-f": PresetSpec(
        _ablation_f, "DEO-AdamW (paper and Ritz rotation) with probe interval f in {5, 10, 20}"),
    "sweep-alpha": PresetSpec(
        _sweep_alpha, "DEO-AdamW (Ritz) with correction strength alpha in {0, 1, 2, 5, 10}"),
    "sweep-displacement": PresetSpec(
        _sweep_displacement,
        "DEO-AdamW (Ritz) with finite-difference displacement dR in {1e-3, 3e-3, 1e-2, 3e-2}"),
    "spikes": PresetSpec(
        _spikes, "a spike-prone GPT (high lr, no warm-up, beta2 0.999), 3 seeds", seeds=3),
    "policies-saddle": PresetSpec(
        _policies_saddle,
        "the saddle suite: every policy beyond the paper, the recommended configuration (and "
        "the two frozen before it), the oracle and PGD, on SGD and Adam, 3 seeds", seeds=3),
    "policies-spikes": PresetSpec(
        _policies_spikes,
        "the spike-prone GPT: AdamW, the recommended DEO (and the two frozen before it), the "
        "paper's DEO, the curvature-gated alpha and the hybrid, 3 seeds", seeds=3),
    "policies-small": PresetSpec(
        _policies_gpt("small"),
        "the paper's small GPT for 2000 iterations, the optimizers of policies-spikes, 3 seeds",
        seeds=3),
    "policies-complex": PresetSpec(
        _policies_gpt("complex"),
        "the paper's complex GPT for 2000 iterations (GPU): AdamW, the recommended DEO, the "
        "second and first frozen and the paper's DEO, 3 seeds", seeds=3),
    "stability-gpt": PresetSpec(
        _stability_gpt,
        "the small GPT where AdamW spikes (lr 0.3, no warm-up, no clipping, beta2 0.999): "
        "AdamW and its remedies, the maintained stability optimizers, DEO's modes, 3 seeds",
        seeds=3),
    "stability-slingshot": PresetSpec(
        _stability_slingshot,
        "Adam's slingshot spikes (Thilak et al. 2022: full-batch, 200 images, no "
        "regularisation, 40000 steps), the contenders of stability-gpt, 3 seeds", seeds=3),
    "stability-gpt-lr": PresetSpec(
        _stability_gpt_lr,
        "the stability GPT over lr 3e-4 to 3e-1 (LR sensitivity): AdamW, stableadamw, spam and "
        "DEO's modes, 3 seeds", seeds=3),
    "stability-slingshot-lr": PresetSpec(
        _stability_slingshot_lr,
        "the slingshot over lr 3e-4 to 1e-2 (LR sensitivity), the optimizers of "
        "stability-gpt-lr, 3 seeds", seeds=3),
}

PRESETS = tuple(REGISTRY)  # the names, in the registry's order


def build_preset(name: str, data: str | None = None) -> Preset:
    """The preset ``name`` (one of ``PRESETS``); its language tasks read the text file
    ``data`` (None: the default corpus)."""
    spec = REGISTRY.get(name)
    if spec is None:
        raise ValueError(f"preset: unknown {name!r}; expected one of {list(PRESETS)}")
    tasks, optimizers = spec.build(data)
    return Preset(name, tasks, optimizers, seeds=spec.seeds, description=spec.description,
                  tuned=spec.tuned)
