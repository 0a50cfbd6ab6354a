"""The probe step's rotation: N turned by the rotation rule on displaced gradients of this
step's batch, for ``DEO._probe`` (design.md, section 1).

The rule (dimer.py) is a pure function of N, an ``hvp`` callable and its carried state; here
that state is read from and written back into the optimizer's per-parameter state, the
displaced evaluations run inside ``DisplacedGradients`` (same RNG, untouched buffers, exact
restore), and the statistics are recorded.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from . import dimer
from .amp import record_overflow
from .checkpoint import DIRECTION
from .distributed import copy_, dot
from .probe_context import DisplacedGradients, InconsistentProbe, NonFiniteProbe

if TYPE_CHECKING:
    from .optimizer import DEO


def rotate(opt: DEO, closure: Callable[[], Tensor], rng_before: dict, loss: Tensor | None,
           scaler: torch.amp.GradScaler | None = None) -> bool:
    """Rotate ``opt``'s N; False if a displaced loss or gradient was not finite, or if a
    displaced loss disagreed with the gradients (``loss``: the main pass's, for that check)."""
    rule = dimer.ROTATION_RULES[opt.rotation]
    # Rotations are computed in the gradient's precision (at least float32). Oja's rule
    # reads a narrower N as it is; the Ritz rule combines many vectors, so a bf16 N is
    # widened for it (a transient copy).
    params = opt._params()
    precise = [working_dtype(p) for p in params]
    working = opt.direction if opt.rotation == "oja" else as_dtypes(opt.direction, precise)
    scale = None if scaler is None else float(scaler.get_scale())
    with DisplacedGradients(params, closure, rng_before, opt.displacement,
                            loss=loss, loss_scale=scale) as probe:
        try:
            result = rule(working, lambda v: as_dtypes(probe.hvp(v), precise),
                          rule_state(opt), rotation_settings(opt, working))
        except InconsistentProbe as mismatch:
            skip_inconsistent_probe(opt, mismatch)
            return True  # the step goes on; only the rotation is skipped
        except NonFiniteProbe:
            result = None
        finally:
            opt._probe_count += probe.count
    if result is None:
        if scaler is None:
            skip_probe(opt)
        else:  # loss scaling overflows now and then by design: no warning
            opt._skipped_probes += 1
            record_overflow(scaler, opt)
        return False
    # N and -N are the same direction to DEO. In tensor scope the concatenation of k unit
    # blocks over sqrt(k) is a unit vector whose cosine is the mean of the blocks'.
    old = opt.direction  # measured before N is overwritten: no copy of the old N
    cosines = [dot([old[i] for i in b], [result.direction[i] for i in b]).abs()
               for b in opt._blocks(old)]
    opt._stats["angle"] = torch.arccos(torch.stack(cosines).mean().clamp(max=1.0))
    copy_(old, result.direction)
    store_rule_state(opt, result.state)
    opt._stats["curvature"] = result.curvature
    return True


def rotation_settings(opt: DEO, tensors: list[Tensor]) -> dimer.RotationSettings:
    return dimer.RotationSettings(budget=opt.probes_per_update, lr=opt.rotation_lr,
                                  memory=opt.hessian_memory, window=opt.ritz_window,
                                  blocks=opt._blocks(tensors))


def rule_state(opt: DEO) -> dict[str, Any]:
    """The rule's carried state: per-parameter tensors as lists, scalars as they are."""
    params = opt._params()
    state: dict[str, Any] = dict(opt._rule_scalars)
    for key in {k for p in params for k in opt.state[p] if k != DIRECTION}:
        state[key] = [opt.state[p][key] for p in params]
    return state


def store_rule_state(opt: DEO, state: dict[str, Any]) -> None:
    params = opt._params()
    for key, value in state.items():
        if isinstance(value, list):
            for p, v in zip(params, value):
                opt.state[p][key] = v
        elif value is None:
            for p in params:
                opt.state[p].pop(key, None)
        else:
            opt._rule_scalars[key] = value


def reset_rule_state(opt: DEO) -> None:
    """Forget the rule's carried state (not N): its next probe starts from N alone."""
    for p in opt._params():
        for key in [k for k in opt.state[p] if k != DIRECTION]:
            del opt.state[p][key]
    opt._rule_scalars = {}


def skip_inconsistent_probe(opt: DEO, mismatch: InconsistentProbe) -> None:
    opt._inconsistent_probes += 1
    if not opt._warned_inconsistent:
        opt._warned_inconsistent = True
        warnings.warn(
            f"DEO: the displaced loss disagrees with its first-order prediction from the "
            f"gradients ({mismatch}); the closure most likely evaluated another batch on its "
            f"second call (a data loader or get_batch() inside the closure), or the "
            f"displacement {opt.displacement:.3g} is too long for the loss to be near "
            f"quadratic over it. The rotation was "
            f"skipped (counted in stats['inconsistent_probes']; warned once). Draw the batch, "
            f"and every micro-batch, before defining the closure.",
            RuntimeWarning, stacklevel=4)


def skip_probe(opt: DEO) -> None:
    opt._skipped_probes += 1
    if not opt._warned_nonfinite:
        opt._warned_nonfinite = True
        warnings.warn(
            "DEO: the probe saw a non-finite loss or gradient; the rotation was skipped and "
            "N kept as it was (counted in stats['skipped_probes']; warned once).",
            RuntimeWarning, stacklevel=4)


def as_dtypes(tensors: list[Tensor], like: list[Tensor] | list[torch.dtype]) -> list[Tensor]:
    """Each tensor in the dtype of its reference (itself, not a copy, where it matches)."""
    return [t.to(ref if isinstance(ref, torch.dtype) else ref.dtype)
            for t, ref in zip(tensors, like)]


def working_dtype(p: Tensor) -> torch.dtype:
    # N in at least float32: a unit vector over millions of entries has tiny components.
    return torch.promote_types(p.dtype, torch.float32)
