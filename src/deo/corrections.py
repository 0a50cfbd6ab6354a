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

from .dimer import blocks
from .distributed import dot, launch_bound, norm


def paper_correction_(grads: list[Tensor], direction: list[Tensor], alpha: float) -> Tensor:
    """g <- g - alpha (g . N) N in place; returns g . N (a 0-d tensor, measured before).

    Two passes over parameter-sized memory and no temporary of that size: one dot product
    (reads g and N) and one in-place multiply-add (reads g and N, writes g). N may be kept in
    a narrower dtype than g (``direction_dtype=torch.bfloat16``); the products are formed in
    g's precision.
    """
    projection = dot(grads, direction)
    add_scaled_(grads, direction, projection * -alpha)
    return projection


def correct_and_clip_(params: list[Tensor], direction: list[Tensor], scope: str,
                      alpha: float | Tensor, max_grad_norm: float | None,
                      record: bool = False) -> tuple[Tensor | None, Tensor | None]:
    """Correct the gradients of ``params`` in .grad, then clip them to ``max_grad_norm``.

    Returns g . N (``scope="global"``, else None) and, when ``record``, |g's projection on
    the span of the N blocks| / |g|, the ``grad_share`` statistic (one more pass over g, so
    probe steps only).
    """
    with_grad = [i for i, p in enumerate(params) if p.grad is not None]
    projection = share = None
    if with_grad:
        grads = [params[i].grad for i in with_grad]
        grad_norm = norm(grads) if record else None
        projections = correct_(grads, [direction[i] for i in with_grad],
                               blocks(grads, scope), alpha)
        if record:
            share = norm(projections) / grad_norm
        projection = projections[0] if scope == "global" else None
    clip_([params[i] for i in with_grad], max_grad_norm)
    return projection, share


def clip_(params: list[Tensor], max_grad_norm: float | None) -> None:
    """Clip the gradients of ``params`` (those that have one) to a total norm, if set."""
    with_grad = [p for p in params if p.grad is not None]
    if max_grad_norm is not None and with_grad:
        torch.nn.utils.clip_grad_norm_(with_grad, max_grad_norm)


def correct_(grads: list[Tensor], direction: list[Tensor], blocks: list[list[int]],
             alpha: float | Tensor) -> list[Tensor]:
    """``paper_correction_`` on each block of tensors that shares one unit N; g . N of each."""
    return [paper_correction_([grads[i] for i in block], [direction[i] for i in block], alpha)
            for block in blocks]


def add_scaled_(xs: list[Tensor], ys: list[Tensor], coefficient: Tensor) -> None:
    """xs <- xs + coefficient * ys in place, with ``coefficient`` a 0-d tensor on the device.

    A multiply-add with a broadcast 0-d factor: no host sync (unlike ``alpha=float(c)``) and
    no parameter-sized temporary (unlike ``_foreach_add_(xs, _foreach_mul(ys, c))``), except
    where many small CUDA tensors make kernel launches the cost (``launch_bound``).
    """
    if launch_bound([*xs, *ys]):  # two multi-tensor kernels (and a temporary) instead of
        # one kernel per tensor: on a GPU with many small tensors launches dominate
        torch._foreach_add_(xs, torch._foreach_mul(ys, coefficient))
        return
    torch._foreach_addcmul_(xs, ys, [coefficient] * len(xs))
