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

A rotation rule turns N towards the minimum-curvature direction. It asks for up to
``settings.budget`` products H v per probe step, each one finite-difference H v on the
current batch (one displaced gradient, restored exactly).

Rules are generators (``Evaluations``): each yields the vectors it needs products of.

* ``oja_rule``: the paper's rule, one Oja step N <- normalize(N + lr F) per evaluation;
* ``ritz_rule``: Rayleigh-Ritz in span{N, previous change of N, residual}, LOBPCG-style. It
  has no step size and is invariant to the scale of the loss; the Hessian products of N and
  of the previous change are carried across probe steps (by linearity, and averaged over
  batches with weight ``settings.memory``), so each further rotation costs one evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .distributed import dot, gram, norm, shard_like
from .state import OjaState, RitzState, UpdateState


def finite_difference_hvp_(displaced_grads: list[Tensor], grads: list[Tensor],
                           displacement: float, main_scale: float = 1.0) -> list[Tensor]:
    """Overwrite ``displaced_grads`` with (displaced_grads - grads / main_scale) / displacement
    and return it (``main_scale``: a loss scale still on ``grads``, a power of two).

    In place, because the displaced gradients are a parameter-sized temporary that is not
    needed afterwards: this keeps the probe's transient memory at one gradient copy.
    """
    if main_scale == 1.0:
        torch._foreach_sub_(displaced_grads, grads)
    else:  # g / S is exact for a power of two S: the same difference as unscaling first
        torch._foreach_add_(displaced_grads, grads, alpha=-1.0 / main_scale)
    torch._foreach_div_(displaced_grads, displacement)
    return displaced_grads


def curvature(direction: list[Tensor], hvp: list[Tensor]) -> Tensor:
    """C = N . HN, the curvature of the loss along the unit vector N."""
    return dot(direction, hvp)


def blocks(tensors: list[Tensor], scope: str) -> list[list[int]]:
    """Indices of ``tensors`` that share one unit N: all of them (``scope="global"``), or one
    block each (``"tensor"``), where an empty tensor has no direction to turn."""
    if scope == "global":
        return [list(range(len(tensors)))]
    return [[i] for i, t in enumerate(tensors) if t.numel() > 0]


def working_dtype(p: Tensor) -> torch.dtype:
    """N in at least float32: a unit vector over millions of entries has tiny components."""
    return torch.promote_types(p.dtype, torch.float32)


def random_direction(params: list[Tensor], seed: int, scope: str,
                     dtype: torch.dtype | None = None) -> list[Tensor]:
    """A random unit N (per block), drawn on the CPU from ``seed``: identical on every rank,
    and for a sharded (DTensor) parameter this rank's shards of the whole draw. Kept in
    ``dtype``, or in each parameter's working dtype; empty tensors are in no block."""
    generator = torch.Generator().manual_seed(seed)
    draws = [shard_like(torch.randn(p.shape, generator=generator).to(
        p.device, working_dtype(p)), p) for p in params]
    stored = [dtype or working_dtype(p) for p in params]
    direction = [d.to(kept) for d, kept in zip(draws, stored)]
    for block in blocks(draws, scope):
        for i, n in zip(block, normalize([draws[i] for i in block])):
            direction[i] = n.to(stored[i])
    return direction


def added_direction(params: list[Tensor], seed: int, scope: str,
                    dtype: torch.dtype | None = None) -> list[Tensor]:
    """N's components for parameters added later (``add_param_group``): a random unit N per
    tensor in tensor scope; zeros in global scope, which keep the global N a unit vector
    (rotations fill them in)."""
    if scope == "tensor":
        return random_direction(params, seed, scope, dtype)
    return [torch.zeros_like(p, dtype=dtype or working_dtype(p)) for p in params]


def normalize(xs: list[Tensor]) -> list[Tensor]:
    """xs / |xs| over the whole list."""
    return list(torch._foreach_div(xs, norm(xs)))


def rotate_oja_(hvp: list[Tensor], direction: list[Tensor], curv: Tensor,
                lr: float) -> list[Tensor]:
    r"""The paper's rotation, with the correct sign, N <- normalize(N + lr F), written into
    the buffer of ``hvp`` (overwritten and returned).

    One step of Oja's rule / projected gradient descent on the Rayleigh quotient. It is
    stable only for lr < 2 / (lambda_max - lambda_min), a scale unknown in advance, and with
    the paper's lr = 1e-3 it barely moves N on real networks (design.md, section 2).
    N + lr F = N + lr (C N - HN) = (1 + lr C) N - lr HN: one scaling and one multiply-add in
    place, so a rotation needs no parameter-sized memory beyond the HN it consumes.
    """
    torch._foreach_mul_(hvp, -lr)
    torch._foreach_addcmul_(hvp, direction, [(1 + lr * curv).to(hvp[0].dtype)] * len(hvp))
    torch._foreach_div_(hvp, norm(hvp))
    return hvp


HvpFn = Callable[[list[Tensor]], list[Tensor]]
# A rule is a generator: it yields each vector v whose product H v it needs, receives H v
# (fresh tensors it owns and may overwrite) and returns its Rotation. The caller decides how
# H v is evaluated: by a displaced gradient of this step's batch, inside step(closure) or
# between first_step() and second_step(), or exactly (the oracle, bench/oracle.py).
Evaluations = Generator[list[Tensor], list[Tensor], "Rotation"]


@dataclass(frozen=True)
class RuleSettings:
    budget: int = 1  # displaced-gradient evaluations per probe step
    lr: float = 1e-3  # oja's step size
    memory: float = 0.0  # ritz: weight of past batches in the carried Hessian products
    window: int = 1  # ritz: batches whose H W is averaged before each Ritz update
    blocks: tuple[tuple[int, ...], ...] = ()  # oja: index blocks sharing one unit N
    largest: bool = False  # turn N towards the MAXIMUM-curvature direction instead


@dataclass
class Rotation:
    direction: list[Tensor]
    curvature: Tensor  # 0-d: the curvature along the returned N, as far as the rule knows it
    state: Any  # what the rule carries to the next probe step (state.py: OjaState, RitzState)
    extra_gradients: int = 0  # gradient evaluations the rule made itself (not through yield)


def run_rule(rule: Callable[..., Evaluations], direction: list[Tensor], hvp: HvpFn,
             state: Any, settings: RuleSettings) -> Rotation:
    """Drive ``rule`` to its Rotation, evaluating each product it asks for with ``hvp``."""
    evaluations = rule(direction, state, settings)
    try:
        vector = next(evaluations)
        while True:
            vector = evaluations.send(hvp(vector))
    except StopIteration as done:
        return done.value


def oja_rule(direction: list[Tensor], state: OjaState, settings: RuleSettings) -> Evaluations:
    """``settings.budget`` Oja steps on the current batch, each block of N rotated on its own.

    Each step rotates in the buffer of the H N it just evaluated (``rotate_oja_``): the probe's
    transient memory stays at the saved parameters plus one gradient-sized buffer.

    The curvature returned is the one measured at the last evaluation (before its rotation);
    with several blocks (``scope="tensor"``), the minimum over blocks. With
    ``settings.largest`` the step is N <- normalize(N - lr F), ascent on the Rayleigh
    quotient, which turns N towards the maximum-curvature direction (the maximum over blocks
    is returned).
    """
    lr = -settings.lr if settings.largest else settings.lr
    curvatures: list[Tensor] = []
    for _ in range(settings.budget):
        hn = yield direction
        new, curvatures = list(direction), []
        for block in settings.blocks:
            n_b, h_b = [direction[i] for i in block], [hn[i] for i in block]
            curv = curvature(n_b, h_b)
            curvatures.append(curv)
            for i, rotated in zip(block, rotate_oja_(h_b, n_b, curv, lr)):
                new[i] = rotated
        direction = new
    extreme = torch.stack(curvatures)
    return Rotation(direction, extreme.max() if settings.largest else extreme.min(), state)


def ritz_rule(direction: list[Tensor], state: RitzState,
              settings: RuleSettings) -> Evaluations:
    """Rayleigh-Ritz rotations, spread over probe steps in a cycle of max(budget, 2) evaluations.

    The cycle's first evaluation refreshes H N on the current batch (blended with the carried
    H N by ``settings.memory``); each further one samples H W for the expansion vector W (the
    residual H N - C N, orthogonalised). After ``settings.window`` samples of H W (averaged,
    from as many batches when the budget is small) N moves to the lowest Ritz vector of
    span{N, P, W}. With budget 1 the cycle spans two probe steps.
    """
    hn, prev, hprev = state.hvp, state.previous, state.hvp_previous
    w, hw, samples = state.expansion, state.hvp_expansion, state.samples
    phase, cycle = state.phase, max(settings.budget, 2)
    for _ in range(settings.budget):
        if phase == 0 or hn is None:
            fresh = yield direction
            hn = fresh if hn is None else _blend(fresh, hn, settings.memory)
            phase = 1
            continue
        phase = (phase + 1) % cycle
        basis, products = lobpcg_basis(direction, hn, prev, hprev)
        if w is None:
            w, hw, samples = residual_direction(basis, products), None, 0
            if w is None:  # N is already an eigenvector of the carried H: nothing to sample
                continue
        fresh = yield w
        hw = fresh if hw is None else _running_mean(hw, fresh, samples)
        samples += 1
        if samples >= settings.window:
            direction, hn, prev, hprev = ritz_update(basis + [w], products + [hw],
                                                     settings.largest)
            w, hw, samples = None, None, 0
    new_state = RitzState(hvp=hn, previous=prev, hvp_previous=hprev, expansion=w,
                          hvp_expansion=hw, samples=samples, phase=phase)
    return Rotation(direction, curvature(direction, hn), new_state)


def lobpcg_basis(n, hn, prev, hprev) -> tuple[list[list[Tensor]], list[list[Tensor]]]:
    """[N, P orthogonalised against N] and their Hessian products (by linearity).

    P's product is carried from earlier probe steps, so on a stochastic loss it was measured
    on other batches than H N; orthogonalising divides that mismatch by |P - (P.N) N|. P
    enters only while that length is at least ``MIN_P_LENGTH``: otherwise a run of large
    rotations multiplies the mismatch cycle after cycle (the measured curvature of the small
    GPT grew by about 1.3x per cycle, to -4e23, before this bound).
    """
    basis, products = [n], [hn]
    if prev is not None:
        c = dot(prev, n)
        _append_unit(basis, products, _axpy(prev, n, -c), _axpy(hprev, hn, -c),
                     shortest=MIN_P_LENGTH)
    return basis, products


MIN_P_LENGTH = 0.5  # P at least 30 degrees from N: its product's mismatch at most doubled


def residual_direction(basis: list[list[Tensor]], products: list[list[Tensor]]):
    """The unit residual H N - C N made orthogonal to the basis, or None when it vanishes."""
    n, hn = basis[0], products[0]
    residual = _axpy(hn, n, -curvature(n, hn))
    for b in basis:  # Gram-Schmidt against the whole basis, for round-off
        _axpy_(residual, b, -dot(residual, b))
    size = norm(residual)
    if not bool(size > 1e-9 * norm(hn)):
        return None
    torch._foreach_div_(residual, size)
    return residual


def ritz_update(basis: list[list[Tensor]], products: list[list[Tensor]],
                largest: bool = False):
    """The lowest (``largest``: highest) Ritz vector of an orthonormal basis as the new N, the
    rest of the move as P."""
    y = lowest_ritz_vector(basis, products, largest)
    y = y * torch.where(y[0] < 0, -1.0, 1.0)  # keep the orientation of N (sign is free)
    new_n, new_hn = _combine(basis, y), _combine(products, y)
    scale = norm(new_n)
    torch._foreach_div_(new_n, scale)
    torch._foreach_div_(new_hn, scale)
    new_p, new_hp = _combine(basis[1:], y[1:]), _combine(products[1:], y[1:])
    p_size = norm(new_p)
    if not bool(p_size > 1e-12):
        return new_n, new_hn, None, None
    torch._foreach_div_(new_p, p_size)
    torch._foreach_div_(new_hp, p_size)
    return new_n, new_hn, new_p, new_hp


def lowest_ritz_vector(basis: list[list[Tensor]], products: list[list[Tensor]],
                       largest: bool = False) -> Tensor:
    """y minimising (``largest``: maximising) y^T T y / y^T y, T_ij = b_i . H b_j
    (symmetrised), for an orthonormal basis."""
    t = gram(basis, products).double()
    _, vectors = torch.linalg.eigh(0.5 * (t + t.T))
    return vectors[:, -1 if largest else 0]


def _append_unit(basis, products, v, hv, shortest: float = 1e-6) -> None:
    size = norm(v)
    if bool(size > shortest):
        torch._foreach_div_(v, size)
        torch._foreach_div_(hv, size)
        basis.append(v)
        products.append(hv)


def _axpy(x: list[Tensor], y: list[Tensor], a: Tensor) -> list[Tensor]:
    """x + a y as new tensors."""
    out = [t.clone() for t in x]
    _axpy_(out, y, a)
    return out


def _axpy_(x: list[Tensor], y: list[Tensor], a: Tensor) -> None:
    """x <- x + a y in place (a a 0-d tensor): no temporary the size of x."""
    torch._foreach_addcmul_(x, y, [a.to(x[0].dtype)] * len(x))


def _combine(vectors: list[list[Tensor]], coeffs: Tensor) -> list[Tensor]:
    """sum_k coeffs[k] vectors[k]."""
    coeffs = coeffs.to(vectors[0][0].dtype)
    out = list(torch._foreach_mul(vectors[0], coeffs[0]))
    for k in range(1, len(vectors)):
        _axpy_(out, vectors[k], coeffs[k])
    return out


def _running_mean(mean: list[Tensor], sample: list[Tensor], count: int) -> list[Tensor]:
    """The mean of count + 1 samples, given the mean of the first count."""
    return list(torch._foreach_lerp(mean, sample, 1.0 / (count + 1)))


def _blend(fresh: list[Tensor], carried: list[Tensor], memory: float) -> list[Tensor]:
    """memory * carried + (1 - memory) * fresh."""
    if memory == 0.0:
        return fresh
    return list(torch._foreach_lerp(fresh, carried, memory))


def update_rule(direction: list[Tensor], state: UpdateState,
                settings: RuleSettings) -> Evaluations:
    """N := the direction of the base optimizer's last update (sharpness.py), and the curvature
    along it, from one evaluation; N as it was before any update is recorded."""
    update = state.update
    target = normalize(update) if update is not None and bool(norm(update) > 0) else direction
    product = yield target
    return Rotation(target, curvature(target, product), state)


ROTATION_RULES: dict[str, Callable[..., Evaluations]] = {
    "oja": oja_rule, "ritz": ritz_rule, "update": update_rule}
