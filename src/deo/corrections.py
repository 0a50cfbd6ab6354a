r"""Gradient corrections: how the estimated minimum-curvature direction N changes the gradient.

The paper's correction (DEO, Algorithm 1) scales the gradient's component along N:

.. math::
    \tilde g = g - \alpha\,(g \cdot N)\,N .

alpha = 1 removes the component (projection onto the complement of N); the paper's default
alpha = 5 reverses it and scales it by 4 ((1 - alpha) = -4), so along N the base optimizer
moves up the gradient instead of down.

Corrections work in place on the gradients (they are about to be consumed by the base
optimizer, and a copy would double the cheap step's memory traffic) and return the
projection g . N for diagnostics. They never synchronise with the host.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .distributed import dot


def paper_correction_(grads: list[Tensor], direction: list[Tensor], alpha: float) -> Tensor:
    """g <- g - alpha (g . N) N in place; returns g . N (a 0-d tensor, measured before)."""
    projection = dot(grads, direction)
    step = torch._foreach_mul(direction, projection * -alpha)
    torch._foreach_add_(grads, [s.to(g.dtype) for s, g in zip(step, grads)])
    return projection


CORRECTIONS = {"paper": paper_correction_}
