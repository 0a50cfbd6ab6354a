"""DEO's argument checks and the construction of the base optimizer.

Every bad value is rejected before anything is built, with a message that names the argument
and what it accepts.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import dimer, policies
from .escape import ESCAPE_RULES
from .probe_context import is_scalar_loss

SCOPES = ("global", "tensor")
# Finite values past these are typing errors, and they overflow float32 arithmetic in the
# step (alpha (g.N), lr HN, theta + dR N) instead of failing where they were passed.
ALPHA_LIMIT = 1e3  # |alpha|; the paper uses 5
ROTATION_LR_LIMIT = 1e6
DISPLACEMENT_LIMIT = 1e3  # a displacement of the order of the weights themselves, or more
ESCAPE_LIMIT = 1e6  # escape_step and escape_trust
SEED_LIMIT = 2**63  # seeds are in [0, 2^63): torch.Generator's signed range
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


def default_displacement(param_groups: list[dict[str, Any]]) -> float:
    lr = param_groups[0].get("lr")
    if lr is None or not float(lr) > 0:
        raise ValueError(f"displacement: None means 10 x the first group's lr, but that lr is "
                         f"{lr!r}; pass displacement= explicitly (a float > 0)")
    return 10.0 * float(lr)


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_settings(*, alpha, interval, displacement, rotation_lr, rotation, probes_per_update,
                   hessian_memory, ritz_window, seed, scope, max_grad_norm,
                   direction_dtype=None, compile_step=False, alpha_rule="fixed",
                   interval_rule="fixed", trigger="always", escape_step=0.0,
                   escape_trust=None, escape_rule="fixed") -> None:
    if not (_is_real(alpha) and math.isfinite(alpha)):
        raise ValueError(f"alpha: expected a finite real number, got {alpha!r}")
    if not abs(alpha) <= ALPHA_LIMIT:
        raise ValueError(f"alpha: expected a finite real number in [-{ALPHA_LIMIT:g}, "
                         f"{ALPHA_LIMIT:g}], got {alpha!r}")
    if not (_is_int(interval) and interval >= 1):
        raise ValueError(f"interval: expected an integer >= 1, got {interval!r}")
    if displacement is not None and not (_is_real(displacement) and math.isfinite(displacement)
                                         and 0 < displacement <= DISPLACEMENT_LIMIT):
        raise ValueError(f"displacement: expected None or a finite float > 0 and <= "
                         f"{DISPLACEMENT_LIMIT:g}, got {displacement!r}")
    if not (_is_real(rotation_lr) and math.isfinite(rotation_lr)
            and 0 <= rotation_lr <= ROTATION_LR_LIMIT):
        raise ValueError(f"rotation_lr: expected a finite float >= 0 and <= "
                         f"{ROTATION_LR_LIMIT:g}, got {rotation_lr!r}")
    if rotation not in dimer.ROTATION_RULES:
        raise ValueError(f"rotation: expected one of {sorted(dimer.ROTATION_RULES)}, "
                         f"got {rotation!r}")
    if not (_is_int(probes_per_update) and probes_per_update >= 1):
        raise ValueError(f"probes_per_update: expected an integer >= 1, "
                         f"got {probes_per_update!r}")
    if not (_is_real(hessian_memory) and 0 <= hessian_memory < 1):
        raise ValueError(f"hessian_memory: expected a float in [0, 1), got {hessian_memory!r}")
    if not (_is_int(ritz_window) and ritz_window >= 1):
        raise ValueError(f"ritz_window: expected an integer >= 1, got {ritz_window!r}")
    if rotation == "ritz" and scope != "global":
        raise ValueError("scope: rotation='ritz' works on one global N; use scope='global'")
    if not _is_int(seed):
        raise TypeError(f"seed: expected an int, got {seed!r}")
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seed: expected an int in [0, 2**63), got {seed!r}")
    if scope not in SCOPES:
        raise ValueError(f"scope: expected one of {list(SCOPES)}, got {scope!r}")
    if max_grad_norm is not None and not (_is_real(max_grad_norm)
                                          and math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise ValueError(f"max_grad_norm: expected None or a finite float > 0, "
                         f"got {max_grad_norm!r}")
    if direction_dtype is not None and not (isinstance(direction_dtype, torch.dtype)
                                            and direction_dtype.is_floating_point):
        raise ValueError(f"direction_dtype: expected None or a floating torch.dtype "
                         f"(e.g. torch.bfloat16, torch.float32), got {direction_dtype!r}")
    if not isinstance(compile_step, bool):
        raise TypeError(f"compile_step: expected True or False, got {compile_step!r}")
    for name, value, accepted in (("alpha_rule", alpha_rule, policies.ALPHA_RULES),
                                  ("interval_rule", interval_rule, policies.INTERVAL_RULES),
                                  ("trigger", trigger, policies.TRIGGERS),
                                  ("escape_rule", escape_rule, ESCAPE_RULES)):
        if value not in accepted:
            raise ValueError(f"{name}: expected one of {list(accepted)}, got {value!r}")
    if not (_is_real(escape_step) and math.isfinite(escape_step)
            and 0 <= escape_step <= ESCAPE_LIMIT):
        raise ValueError(f"escape_step: expected a finite float >= 0 and <= {ESCAPE_LIMIT:g}, "
                         f"got {escape_step!r}")
    if escape_step > 0 and scope != "global":
        raise ValueError("escape_step: the negative-curvature step moves along one global N; "
                         "use scope='global'")
    if escape_trust is not None and not (_is_real(escape_trust) and math.isfinite(escape_trust)
                                         and 0 < escape_trust <= ESCAPE_LIMIT):
        raise ValueError(f"escape_trust: expected None or a finite float > 0 and <= "
                         f"{ESCAPE_LIMIT:g}, got {escape_trust!r}")
