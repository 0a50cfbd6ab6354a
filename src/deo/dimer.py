r"""The dimer probe: finite-difference Hessian-vector products, curvature and rotation rules.

A dimer is the pair of points theta and theta + dR * N, with N a unit vector. The gradients
at both ends give, on the same minibatch,

.. math::
    HN \approx \frac{g(\theta + dR\,N) - g(\theta)}{dR}, \qquad
    C = N^\top HN, \qquad F = -(HN - C\,N),

the Hessian applied to N, the curvature along N (C < 0: negative curvature) and the
rotational force, minus the part of HN orthogonal to N. Moving N along F lowers the
Rayleigh quotient N^T H N, i.e. turns N towards the MINIMUM-curvature eigenvector.
(The authors' code adds +(HN - C N) instead: gradient ascent, which finds the maximum.)

Every function here is small and works on lists of tensors (one per parameter tensor) that
together form one vector; the optimizer decides which lists form a block (all parameters
for ``scope="global"``, one tensor each for ``scope="tensor"``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .distributed import dot, norm


def finite_difference_hvp_(displaced_grads: list[Tensor], grads: list[Tensor],
                           displacement: float) -> list[Tensor]:
    """Overwrite ``displaced_grads`` with (displaced_grads - grads) / displacement and return it.

    In place, because the displaced gradients are a parameter-sized temporary that is not
    needed afterwards: this keeps the probe's transient memory at one gradient copy.
    """
    torch._foreach_sub_(displaced_grads, grads)
    torch._foreach_div_(displaced_grads, displacement)
    return displaced_grads


def curvature(direction: list[Tensor], hvp: list[Tensor]) -> Tensor:
    """C = N . HN, the curvature of the loss along the unit vector N."""
    return dot(direction, hvp)


def rotational_force(direction: list[Tensor], hvp: list[Tensor], curv: Tensor) -> list[Tensor]:
    """F = -(HN - C N) = C N - HN: minus the component of HN orthogonal to N.

    F is minus half the gradient of the Rayleigh quotient N^T H N on the unit sphere.
    """
    force = torch._foreach_mul(direction, curv)
    torch._foreach_sub_(force, [h.to(force[0].dtype) for h in hvp])
    return force


def normalize(xs: list[Tensor]) -> list[Tensor]:
    """xs / |xs| over the whole list."""
    return list(torch._foreach_div(xs, norm(xs)))


def rotate_oja(direction: list[Tensor], hvp: list[Tensor], curv: Tensor,
               lr: float) -> list[Tensor]:
    r"""The paper's rotation, with the correct sign: N <- normalize(N + lr * F).

    One step of Oja's rule / projected gradient descent on the Rayleigh quotient. It is
    stable only for lr < 2 / (lambda_max - lambda_min), a scale unknown in advance, and with
    the paper's lr = 1e-3 it barely moves N on real networks (design.md, section 2).
    """
    force = rotational_force(direction, hvp, curv)
    torch._foreach_mul_(force, lr)
    torch._foreach_add_(force, direction)
    return normalize(force)


ROTATION_RULES = {"oja": rotate_oja}
