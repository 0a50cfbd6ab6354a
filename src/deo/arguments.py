"""DEO's checks of what it wraps (the base optimizer, the parameters, their gradients) and
the construction of the base optimizer; its own settings are checked in config.py.

Every bad value is rejected before anything is built, with a message that names the argument
and what it accepts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .config import DISPLACEMENT_LIMIT, DEOConfig
from .displaced import is_scalar_loss

# Bases whose step() needs a closure of its own or gradients DEO cannot project.
REFUSED_BASES = {
    torch.optim.LBFGS: "it needs a closure in its own step() (its line search re-evaluates "
                       "the loss), and DEO calls base.step() without one",
    torch.optim.SparseAdam: "it takes sparse gradients only, and DEO's dot products and "
                            "corrections need dense ones",
}


def check_base(base: Any) -> None:
    """Refuse the torch optimizers (and their subclasses) that cannot be DEO's base, given as
    a class or as an instance."""
    cls = base if isinstance(base, type) else type(base)
    for refused, why in REFUSED_BASES.items():
        if issubclass(cls, refused):
            raise TypeError(f"base: torch.optim.{refused.__name__} cannot be DEO's base: {why}; "
                            f"use a first-order optimizer such as torch.optim.AdamW, Adam or SGD")


def check_params(base: Optimizer) -> None:
    """Refuse parameters that DEO's one real vector N cannot describe."""
    params = [p for group in base.param_groups for p in group["params"]]
    seen: dict[int, int] = {}
    for i, p in enumerate(params):
        if id(p) in seen:
            raise ValueError(f"params: parameter {i} is parameter {seen[id(p)]} again; list each "
                             f"tensor once (a repeated tensor would count twice in every dot "
                             f"product and corrupt the curvature)")
        seen[id(p)] = i
        if p.is_complex():
            raise TypeError(f"params: parameter {i} is complex ({p.dtype}); DEO's curvature and "
                            f"N are real: optimize torch.view_as_real(...) of it instead")
        if not p.is_floating_point():
            raise TypeError(f"params: parameter {i} has dtype {p.dtype}; DEO needs floating "
                            f"point parameters")
        if p.is_meta:
            raise ValueError(f"params: parameter {i} is on the meta device and holds no data; "
                             f"materialise the model first (model.to_empty(device=...) and "
                             f"initialise it)")
        if p.is_sparse:
            raise TypeError(f"params: parameter {i} is a sparse tensor; DEO needs dense "
                            f"parameters")
    if params and not any(p.numel() > 0 for p in params):
        raise ValueError("params: every parameter is empty (0 elements); nothing to optimize")


def add_checked_group(base: Optimizer, param_group: dict[str, Any]) -> list[Tensor]:
    """``base.add_param_group`` with DEO's parameter checks; the group's parameters. A group
    that fails them is taken out again."""
    base.add_param_group(param_group)
    try:
        check_params(base)
    except (ValueError, TypeError):
        base.param_groups.pop()
        raise
    return list(base.param_groups[-1]["params"])


def check_displacement(displacement: float, params: list[Tensor]) -> None:
    """dR must move the parameters: at least the machine epsilon of their dtype."""
    floor = max(torch.finfo(torch.promote_types(p.dtype, torch.float32)).eps for p in params)
    if not displacement >= floor:
        raise ValueError(f"displacement: {displacement!r} is below the machine epsilon of the "
                         f"parameters' dtype ({floor:.3g}): theta + dR N would round to theta; "
                         f"expected a float in [{floor:.3g}, {DISPLACEMENT_LIMIT:g}]")


def check_gradients(params: list[Tensor]) -> None:
    """Refuse sparse gradients (nn.Embedding(sparse=True)) at the first step, before any work."""
    for i, p in enumerate(params):
        if p.grad is not None and p.grad.is_sparse:
            raise RuntimeError(f"DEO.step(): parameter {i} has a sparse gradient (e.g. "
                               f"nn.Embedding(sparse=True)); DEO needs dense gradients: use "
                               f"sparse=False")


def loss_value(loss: Any, needed_by: str) -> float:
    """The closure's loss as a float, for settings that read it on the host."""
    if is_scalar_loss(loss):
        return float(loss)
    got = type(loss).__name__ if not isinstance(loss, Tensor) else \
        f"a tensor of shape {tuple(loss.shape)}"
    raise TypeError(f"DEO.step(): {needed_by} reads the loss the closure returns, so the "
                    f"closure must return it as a number or a one-element tensor; got {got}")


def build_base(params, base, base_kwargs: dict[str, Any]) -> Optimizer:
    if isinstance(base, Optimizer):
        if base_kwargs:
            raise TypeError(f"base is a ready optimizer instance, so keyword arguments "
                            f"{sorted(base_kwargs)} have nowhere to go; pass a class instead")
        if params is not None:
            given = [p for g in _as_groups(params) for p in g["params"]]
            owned = [p for g in base.param_groups for p in g["params"]]
            if {id(p) for p in given} != {id(p) for p in owned}:
                raise ValueError("params: must be None or exactly the parameters of the base "
                                 "optimizer instance")
        return base
    if isinstance(base, type) and issubclass(base, Optimizer):
        if params is None:
            raise ValueError("params: required when base is an optimizer class")
        return base(params, **base_kwargs)
    raise TypeError(f"base: expected a torch.optim.Optimizer subclass or instance, "
                    f"got {base!r}")


def _as_groups(params) -> list[dict[str, Any]]:
    if isinstance(params, Tensor):
        return [{"params": [params]}]
    params = list(params)
    if params and isinstance(params[0], dict):
        return [{**g, "params": list(g["params"])} for g in params]
    return [{"params": params}]


def with_displacement(config: DEOConfig, param_groups: list[dict[str, Any]]) -> DEOConfig:
    """``config`` with dR resolved (None: 10 x the first group's lr) and checked against the
    parameters' dtype; ``"auto"`` stays, for each probe step (displacement.py)."""
    if config.displacement is None:
        lr = param_groups[0].get("lr")
        if lr is None or not float(lr) > 0:
            raise ValueError(f"displacement: None means 10 x the first group's lr, but that lr "
                             f"is {lr!r}; pass displacement= explicitly (a float > 0)")
        config = dataclasses.replace(config, displacement=10.0 * float(lr))
    if config.displacement == "auto":  # resolved at each probe step: always above round-off
        return config
    check_displacement(config.displacement,
                       [p for group in param_groups for p in group["params"]])
    return config
