"""fp16 loss scaling inside DEO: what ``DEO.step(closure, grad_scaler=scaler)`` needs.

torch's ``GradScaler.step`` refuses a closure, and DEO's probe needs one, so with a closure
DEO does the scaler's work itself: unscale, check for inf/NaN, skip the step on overflow,
update. A loop that runs its own passes (first_step/second_step) calls scaler.step(opt).
"""

from __future__ import annotations

import torch
from torch.amp.grad_scaler import OptState
from torch.optim import Optimizer


def main_grads_scale(scaler: torch.amp.GradScaler | None, opt: Optimizer) -> float:
    """The scale still on the gradients in .grad: the scaler's, unless ``unscale_(opt)``
    already ran this step (step(closure) unscales before it probes; a training loop running
    its own passes unscales later, in scaler.step or before clipping)."""
    if scaler is None:
        return 1.0
    stage = scaler._per_optimizer_states[id(opt)]["stage"]
    return 1.0 if stage is OptState.UNSCALED else float(scaler.get_scale())


# GradScaler keeps the inf/NaN flags that unscale_ found per optimizer and device, and the
# stage of each optimizer; update() backs off the scale if any flag is set. There is no
# public accessor, so these read and set them where GradScaler.step itself does (torch >= 1.6).

def finite_after_unscale(scaler: torch.amp.GradScaler, opt: Optimizer) -> bool:
    found = scaler._found_inf_per_device(opt)
    return not sum(v.item() for v in found.values())


def record_overflow(scaler: torch.amp.GradScaler, opt: Optimizer) -> None:
    for found_inf in scaler._found_inf_per_device(opt).values():
        found_inf.fill_(1.0)
