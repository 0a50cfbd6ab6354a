"""Optimizers by name, as configs and the report spell them.

    sgd, adam, adamw, sophia, pgd          the baselines (sgd: momentum 0.9)
    gd, deo-gd, deo-gd-ritz                plain gradient descent (the saddle suite's)
    spam, stablespam, stableadamw, adopt   stability-oriented baselines (pytorch-optimizer,
                                           their documented defaults but the lr)
    adamw-clip1, adamw-beta2-0.95,         AdamW with one standard remedy against spikes:
    adamw-warmup10                         clipping at 1.0, beta2 0.95, a 10% linear warm-up
    adam-authors, deo-adamw-authors        the paper's Adam and DEO-AdamW as the authors' code
                                           ran them (weight decay on every tensor; beta2
                                           0.999 for the second)
    deo-<base>                             DEO in the paper's mode (rotation "oja", its defaults)
    deo-<base>-ritz                        DEO with the scale-free Ritz rotation
    deo-<base>-update                      N along the base's last update (sharpness.py;
                                           with step_rule=sharpness, a trust region on it)
    deo-oracle-<base>                      N from Lanczos on the exact batch Hessian (oracle.py;
                                           sgd, adam, adamw; slow: small models only)
    <name>@lr=<value>                      any of these at a tuned lr (deo bench --tune)
    <name>:key=value,key=value             any of the above with DEO settings changed,
                                           e.g. "deo-adamw:interval=5", "deo-adamw:alpha=1",
                                           "deo-sgd-ritz:alpha_rule=curvature,escape_step=0.25"

Baselines come from torch.optim and the maintained pytorch-optimizer package (SophiaH, the
stability optimizers);
perturbed gradient descent is ours (pgd.py), since no maintained package has it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim import Optimizer

from ..config import FIELDS, DEOConfig, parse_overrides
from ..config import recommended as deo_recommended
from ..optimizer import DEO
from .oracle import OracleDEO
from .pgd import PerturbedGD

BASES = ("sgd", "adam", "adamw", "sophia", "pgd")
ROTATIONS = ("oja", "ritz")
NAMES = (*BASES, *(f"deo-{b}" for b in BASES if b != "pgd"),
         *(f"deo-{b}-ritz" for b in BASES if b != "pgd"))
# The saddle recommendation (deo.recommended("saddle"), the same settings): each candidate was
# chosen on the saddle suite and a 600-step run of the small GPT, frozen here, then judged by its
# runs everywhere else (docs/open-questions.md). FIRST_FROZEN (Ritz rotation, a probe every 5
# steps, the gradient's component along N doubled where the paper reverses it (alpha = -1), and the
# negative-curvature step s |C| with s = 0.25) escaped strict saddles 3-4x faster than SGD and
# diverged on the GPT settings: the escape step's absolute length. SECOND_FROZEN checks each escape
# step (escape_rule="checked", a trust region: deo/escape.py); it tied AdamW on the paper's GPTs
# and ended 0.06 behind on the spike-prone one, where the alpha = -1 correction turned out to cost
# it. THIRD_FROZEN drops the correction (alpha = 0) and keeps the checked escape step alone. It was
# proposed after that finding, so it passed the same selection first (results/third-round-
# selection/) and was frozen before its runs: the spike-prone GPT on fresh seeds 3-5 and the
# 2000-iteration small and complex GPTs. It met the SGD saddle, spike-prone and small-GPT targets,
# ended 0.004 behind AdamW on the complex GPT (0.009 over a fourth seed), and is at least as good
# as SECOND_FROZEN on every language model: what we recommend.
FIRST_FROZEN = "alpha=-1,escape_step=0.25,interval=5"
SECOND_FROZEN = "alpha=-1,escape_step=0.25,interval=5,escape_rule=checked"
THIRD_FROZEN = "alpha=0,escape_step=0.25,interval=5,escape_rule=checked"
# The fourth, deo.recommended("saddle") since: the line search along N (escape_rule="search")
# with the scale-free dimer (displacement="auto") and two evaluations per probe, chosen on the
# saddle suite's selection split with every baseline at its best lr (benchmarks/saddle_suite.py)
# and frozen before its judgment split ran. THIRD_FROZEN's checked step never fired there at
# the default dR = 10 x lr: trials shorter than dR are not tried.
FOURTH_FROZEN = ("alpha=0,interval=5,probes_per_update=2,escape_step=1,escape_rule=search,"
                 "displacement=auto")


def config_name(base: str, settings: dict[str, Any]) -> str:
    """The bench name of DEO with ``settings`` (keyword arguments of ``deo.DEO``) on ``base``:
    the rotation goes into the name, the rest after the colon in their order."""
    rotation = settings.get("rotation", "oja")
    head = f"deo-{base}" if rotation == "oja" else f"deo-{base}-{rotation}"
    rest = ",".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
                    for key, value in settings.items() if key != "rotation")
    return f"{head}:{rest}" if rest else head


def recommended(base: str, goal: str = "saddle") -> str:
    """``deo.recommended(goal)`` on ``base``, as a bench optimizer name."""
    return config_name(base, deo_recommended(goal))


def frozen(base: str, settings: str) -> str:
    """An earlier frozen candidate (``FIRST_FROZEN``, ...) with the Ritz rotation on ``base``."""
    return f"deo-{base}-ritz:{settings}"


# not in NAMES: slow
ORACLE_NAMES = tuple(f"deo-oracle-{b}" for b in ("gd", "sgd", "adam", "adamw"))
UPDATE_NAMES = tuple(f"deo-{b}-update" for b in BASES if b != "pgd")  # not in NAMES: new
# plain gradient descent (SGD without momentum), a baseline of the saddle suite only
GD_NAMES = ("gd", "deo-gd", "deo-gd-ritz")
# pytorch-optimizer's stability-oriented optimizers, baselines of the stability presets only
STABILITY_BASELINES = ("spam", "stablespam", "stableadamw", "adopt")
# AdamW with one remedy each (what the runner changes for them: the task's clipping, a warm-up
# over the first fraction of the steps, or the betas)
REMEDIES: dict[str, dict[str, Any]] = {
    "adamw-clip1": {"max_grad_norm": 1.0},
    "adamw-beta2-0.95": {"betas": (0.9, 0.95)},
    "adamw-warmup10": {"warmup_fraction": 0.1},
}
# The paper's rows as the authors' code ran them (design.md, section 2): their "Adam" with
# coupled weight decay 0.1 on every tensor, and their "DEO-AdamW" (the paper's rule) with
# beta2 0.999, decaying every tensor; the bench's "adam" and "deo-adamw" decay only 2-D
# tensors and use beta2 0.99 as the AdamW baseline does. name: (base, rotation, what changes)
AUTHORS_ROWS: dict[str, tuple[str, str | None, dict[str, Any]]] = {
    "adam-authors": ("adam", None, {"decay_every_tensor": True}),
    "deo-adamw-authors": ("adamw", "oja", {"decay_every_tensor": True, "betas": (0.9, 0.999)}),
}


@dataclass(frozen=True)
class OptimizerSpec:
    name: str  # as given, options included
    base: str
    rotation: str | None  # None: not DEO
    options: dict[str, Any] = field(default_factory=dict)
    remedy: dict[str, Any] = field(default_factory=dict)  # REMEDIES[name], for the runner

    @property
    def needs_create_graph(self) -> bool:  # SophiaH estimates the Hessian from the grad graph
        return self.base == "sophia"


def parse_optimizer(name: str) -> OptimizerSpec:
    """'deo-adamw-ritz:interval=5' -> OptimizerSpec(base='adamw', rotation='ritz', {...}).

    A suffix '@lr=<value>' names a run at a tuned learning rate (tuning.py); the task carries
    that lr, the name records it."""
    name_without_lr, at, tuned = name.partition("@")
    if at:
        value = tuned.removeprefix("lr=")
        try:
            lr = float(value)
        except ValueError:
            lr = math.nan
        if not (tuned.startswith("lr=") and lr > 0 and math.isfinite(lr)):
            raise ValueError(f"optimizer {name!r}: expected '<name>@lr=<a float > 0>' after "
                             f"the '@', got {tuned!r}")
        return dataclasses.replace(parse_optimizer(name_without_lr), name=name)
    head, _, tail = name.partition(":")
    known = NAMES + ORACLE_NAMES + UPDATE_NAMES + GD_NAMES + STABILITY_BASELINES + \
        tuple(REMEDIES) + tuple(AUTHORS_ROWS)
    if head not in known:
        raise ValueError(f"optimizer: unknown name {head!r}; expected one of {list(known)}, "
                         f"optionally followed by ':key=value,...' with keys {list(FIELDS)}")
    if head in REMEDIES:
        if tail:
            raise ValueError(f"optimizer {name!r}: options (':key=value,...') are for DEO "
                             f"variants only")
        return OptimizerSpec(name, "adamw", None, remedy=REMEDIES[head])
    if head in AUTHORS_ROWS:
        if tail:
            raise ValueError(f"optimizer {name!r}: the authors' rows take no options")
        base, rotation, changes = AUTHORS_ROWS[head]
        return OptimizerSpec(name, base, rotation, remedy=changes)
    if head in ORACLE_NAMES:
        base, rotation = head.removeprefix("deo-oracle-"), "oracle"
    elif head.startswith("deo-"):
        base, _, rotation = head[4:].partition("-")
        rotation = rotation or "oja"
    else:
        base, rotation = head, None
    if tail and rotation is None:
        raise ValueError(f"optimizer {name!r}: options (':key=value,...') are for DEO "
                         f"variants only")
    try:
        options = parse_overrides(tail)
    except ValueError as error:
        raise ValueError(f"optimizer {name!r}: {error}") from None
    if "rotation" in options:
        raise ValueError(f"optimizer {name!r}: the rotation is part of the name "
                         f"(deo-<base> for oja, deo-<base>-ritz, deo-<base>-update), not an "
                         f"option")
    return OptimizerSpec(name, base, rotation, options)


def build_optimizer(name: str, param_groups: list[dict[str, Any]], *, lr: float,
                    base_overrides: dict[str, Any] | None = None,
                    displacement: float | None = None,
                    max_grad_norm: float | None = None) -> tuple[Optimizer, OptimizerSpec]:
    """The optimizer ``name`` over ``param_groups``; DEO variants clip inside (max_grad_norm)."""
    spec = parse_optimizer(name)
    overrides = {**(base_overrides or {}), **({"betas": spec.remedy["betas"]}
                                              if "betas" in spec.remedy else {})}
    base_cls, base_kwargs = _base(spec.base, lr, overrides)
    if spec.rotation is None:
        return base_cls(param_groups, **base_kwargs), spec
    config = DEOConfig(displacement=displacement, max_grad_norm=max_grad_norm)
    if spec.rotation == "oracle":
        config = dataclasses.replace(config, **spec.options)
        return OracleDEO(param_groups, base=base_cls, config=config, **base_kwargs), spec
    config = dataclasses.replace(config, rotation=spec.rotation, **spec.options)
    return DEO(param_groups, base=base_cls, config=config, **base_kwargs), spec


def _base(base: str, lr: float, overrides: dict[str, Any]) -> tuple[type[Optimizer], dict]:
    if base == "sgd":
        return torch.optim.SGD, {"lr": lr, "momentum": 0.9}
    if base == "gd":
        return torch.optim.SGD, {"lr": lr}
    if base in ("adam", "adamw"):
        kwargs = {"lr": lr, "betas": tuple(overrides.get("betas", (0.9, 0.99))),
                  **({"eps": float(overrides["eps"])} if "eps" in overrides else {})}
        return (torch.optim.Adam if base == "adam" else torch.optim.AdamW), kwargs
    if base == "sophia":
        try:
            from pytorch_optimizer import SophiaH
        except ImportError as err:
            raise ImportError('optimizer "sophia" needs pytorch-optimizer: '
                              'pip install "deo[bench]"') from err
        return SophiaH, {"lr": lr, "betas": (0.965, 0.99), "update_period": 10}
    if base in STABILITY_BASELINES:
        try:
            from pytorch_optimizer import load_optimizer
        except ImportError as err:
            raise ImportError(f'optimizer "{base}" needs pytorch-optimizer: '
                              f'pip install "deo[bench]"') from err
        return load_optimizer(base), {"lr": lr}
    return PerturbedGD, {"lr": lr}
