"""fp16 loss scaling inside DEO: what ``DEO.step(closure, grad_scaler=scaler)`` needs.

torch's ``GradScaler.step`` refuses a closure, and DEO's probe needs one, so DEO does the
scaler's work itself: unscale, check for inf/NaN, skip the step on overflow, update.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.optim import Optimizer


def unscaling(closure: Callable[[], Tensor], params: list[Tensor],
               scaler: torch.amp.GradScaler) -> Callable[[], Tensor]:
    """The closure, with the gradients it leaves in .grad divided by the scaler's scale.

    The probe sets .grad to None before each displaced call, so these are the displaced
    gradients alone; the scale is the one ``unscale_`` used (``update`` comes later).
    """
    inv_scale = 1.0 / scaler.get_scale()  # rounds to unscale_'s float32 reciprocal

    def unscaled() -> Tensor:
        loss = closure()
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, inv_scale)
        return loss

    return unscaled


# GradScaler keeps the inf/NaN flags that unscale_ found per optimizer and device; update()
# backs off the scale if any is set. There is no public accessor, so these two read and set
# them where GradScaler.step itself does (torch >= 1.6).

def finite_after_unscale(scaler: torch.amp.GradScaler, opt: Optimizer) -> bool:
    found = scaler._found_inf_per_device(opt)
    return not sum(v.item() for v in found.values())


def record_overflow(scaler: torch.amp.GradScaler, opt: Optimizer) -> None:
    for found_inf in scaler._found_inf_per_device(opt).values():
        found_inf.fill_(1.0)
