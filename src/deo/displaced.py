"""The displaced-gradient evaluation: what it must see exactly as the main pass did, and
must leave untouched.

The displaced gradient is compared with the main one at a displacement of about 1e-2, so any
difference that does not come from the displacement swamps the finite difference:

* randomness: dropout masks (and any other random op) must be identical in both passes, so
  the probe replays the RNG state captured before the main pass, and afterwards the RNG is
  put back where the main pass left it, so the probe is invisible to the rest of training;
* module buffers: BatchNorm running statistics (and any other buffer a forward pass writes)
  must not be updated by the probe, so every buffer of every module that runs during the
  probe is saved at its first call and restored afterwards.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .dimer import finite_difference_hvp_
from .distributed import copy_, dot, norm


def capture_rng_state() -> dict:
    """The CPU generator's state and, where CUDA is in use, every CUDA device's."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


class FrozenBuffers:
    """Restore, at ``stop()``, every buffer of every nn.Module whose forward ran since
    ``start()``.

    A global forward pre-hook sees each module before it runs, so DEO needs no reference to
    the model: whatever the displaced pass calls is covered. The first module seen is saved
    with all its submodules: a ``torch.compile``-d module runs its submodules inside compiled
    code, where no hook fires, so only the compiled wrapper itself is seen (its buffers live
    in the submodule ``_orig_mod``).
    """

    def __init__(self) -> None:
        self.saved: dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.handle = None

    def start(self) -> None:
        self.handle = nn.modules.module.register_module_forward_pre_hook(self._snapshot)

    def stop(self) -> None:
        if self.handle is None:
            return
        self.handle.remove()
        self.handle = None
        with torch.no_grad():
            for buffers in self.saved.values():
                for live, copy in buffers:
                    live.copy_(copy)
        self.saved = {}

    def _snapshot(self, module: nn.Module, args) -> None:
        if module in self.saved:
            return
        for sub in module.modules():
            if sub not in self.saved:
                self.saved[sub] = [(b, b.detach().clone()) for b in sub.buffers(recurse=False)]


@contextmanager
def frozen_module_buffers() -> Iterator[None]:
    """``FrozenBuffers`` around a block."""
    frozen = FrozenBuffers()
    frozen.start()
    try:
        yield
    finally:
        frozen.stop()


class NonFiniteProbe(ArithmeticError):
    """A displaced loss or finite-difference HVP was inf/NaN: the rotation must be skipped."""


class InconsistentProbe(ArithmeticError):
    """The displaced loss disagrees with the gradients at both ends: another batch."""


# The displaced loss must match L + dR (g + g').v / 2, the trapezoid rule along v. Its error,
# dR^3 / 12 times the third derivative of L along v, stays far below these tolerances at the
# displacements DEO uses (measured on the small character GPT at dR = 1e-2: at most 1.3e-5 of
# the loss, median 1.3e-7). A closure that draws a new batch on each call misses by the
# batches' difference in loss: a median 1.6e-2 of the loss there, 5 to 460 times the
# prediction. Near a degenerate saddle whose loss is about 0 (the monkey saddle at a distance
# below dR) the third order dominates and can exceed these: the rotation is then skipped.
CONSISTENCY_RTOL = 1e-3  # of the loss itself: its float rounding and the third order
CONSISTENCY_PTOL = 4.0  # of the terms' size: a loss far from quadratic over a large dR

_NO_GRADIENT = (
    "DEO.step(): the closure left no gradient at the displaced parameters (its second call "
    "ran no backward). On probe steps DEO calls the closure again at theta + dR N, so it must "
    "zero the gradients, compute the loss on this step's batch, call backward() and return "
    "the loss. A do-nothing closure (Lightning's manual optimization substitutes one for "
    "opt.step() without a closure) cannot work there: pass opt.step(closure=closure) with a "
    "real closure.")


class DisplacedGradients:
    """Finite-difference Hessian-vector products on the batch of the current step.

    One displaced-gradient evaluation is ``displace(v, length)``, one forward and backward
    pass of this step's batch at theta + length v (v shaped like the parameters), then
    ``collect(loss)``, which returns (g(theta + length v) - g(theta)) / length. The pass runs
    with the RNG state of the main pass (the same dropout masks), and every module buffer it
    writes is restored. After ``collect`` (and on ``close()``) the parameters are restored
    from a saved copy (exact, unlike subtracting length v), the original gradient tensors are
    put back, and the RNG is left where the main pass left it.

    ``main_scale`` and ``displaced_scale``: the loss scale of the gradients in .grad now and
    of those the displaced pass leaves (a GradScaler's scale, or 1): the products are
    unscaled.
    """

    def __init__(self, params: list[torch.Tensor], rng_before: dict, *, loss=None,
                 loss_scale: float | None = None, main_scale: float = 1.0,
                 displaced_scale: float = 1.0) -> None:
        self.params = params
        self.rng_before = rng_before
        # the main pass's loss: each displaced loss is checked against the gradients (None:
        # no check); under a GradScaler the closure may return the loss scaled by loss_scale
        self.loss, self.loss_scale = loss, loss_scale
        self.main_scale, self.displaced_scale = main_scale, displaced_scale
        self.count = 0
        self.buffers = FrozenBuffers()
        self.length: float | None = None  # of the displacement in progress

    def open(self) -> DisplacedGradients:
        self.grads = [p.grad for p in self.params]
        # DDP(gradient_as_bucket_view=True) makes .grad a view of its communication bucket and
        # writes the all-reduced gradients of every later backward into that same memory, so
        # the probe's backward would overwrite the main gradients. Gradients that are views
        # are therefore copied here and written back after each displaced evaluation.
        self.overwritable = [i for i, g in enumerate(self.grads) if g is not None and g._is_view()]
        self.main = [g if g is not None else torch.zeros_like(p)
                     for g, p in zip(self.grads, self.params)]
        for i in self.overwritable:
            self.main[i] = self.main[i].clone()
        # A gradient that carries a graph (backward(create_graph=True), e.g. for Sophia's
        # Hessian estimate) keeps the parameters as saved tensors of that graph: writing into
        # them would invalidate it. Then the probe swaps .data to fresh tensors instead and
        # never touches the originals; otherwise it writes in place and restores from a copy.
        self.swap = any(g is not None and g.requires_grad for g in self.grads)
        self.saved = [p.data if self.swap else p.detach().clone() for p in self.params]
        self.displaced = False  # whether the parameters now differ from the saved ones
        self.rng_after = capture_rng_state()
        return self

    def close(self) -> None:
        if not hasattr(self, "saved"):
            return
        self.buffers.stop()
        self._restore_params()  # a no-op unless an evaluation broke off while displaced
        self._restore_grads()
        restore_rng_state(self.rng_after)
        del self.saved, self.main

    __enter__ = open

    def __exit__(self, *exc) -> None:
        self.close()

    def displace(self, vector: list[torch.Tensor], length: float) -> None:
        """Move to theta + length v and set up the displaced pass: .grad empty, the main
        pass's RNG state, buffers watched."""
        for p in self.params:  # the probe's backward writes fresh tensors; the originals stay
            p.grad = None
        self.vector, self.length = vector, length
        self.displaced = True
        with torch.no_grad():
            if self.swap:
                for p, origin, v in zip(self.params, self.saved, vector):
                    p.data = origin + (length * v).to(p.dtype)
            else:  # the parameters hold the saved values: every pass restores them. A v in
                # another dtype (a bf16 N) is cast element by element: no widened copy of v.
                torch._foreach_add_(self.params, list(vector), alpha=length)
        restore_rng_state(self.rng_before)
        self.buffers.start()

    def collect(self, loss=None, check: bool = True) -> list[torch.Tensor]:
        """(g' - g) / length from the gradients the displaced pass left; theta, .grad and the
        buffers restored. ``check``: compare ``loss`` with the gradients (see below)."""
        params, length = self.params, self.length
        self.buffers.stop()
        try:
            if all(p.grad is None for p, g in zip(params, self.grads) if g is not None):
                raise RuntimeError(_NO_GRADIENT)
            if self.displaced_scale != 1.0:  # the scale is a power of two: exact
                torch._foreach_mul_([p.grad for p in params if p.grad is not None],
                                    1.0 / self.displaced_scale)
            displaced = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            for i in self.overwritable:  # may be the main gradient's memory, restored below
                displaced[i] = displaced[i].clone()
        finally:
            self._restore_params()
            self._restore_grads()
            self.length = None
        self.count += 1
        hvp = finite_difference_hvp_([d.detach() for d in displaced], self.main, length,
                                     main_scale=self.main_scale)
        # One host sync per evaluation (probe steps only): a non-finite HN must not reach N.
        if not (_is_finite(loss) and _is_finite(norm(hvp))):
            raise NonFiniteProbe("the displaced loss or gradient is not finite")
        if check and is_scalar_loss(self.loss) and is_scalar_loss(loss):
            self._check_consistent(loss, self.vector, hvp, length)
        return hvp

    def main_dot(self, vector: list[torch.Tensor]) -> torch.Tensor:
        """g . v with the main gradient unscaled."""
        return dot(self.main, vector) / self.main_scale

    def _check_consistent(self, loss, vector: list[torch.Tensor],
                          hvp: list[torch.Tensor], dr: float) -> None:
        """Raise InconsistentProbe unless L' - L = dR (g + g').v / 2 within the tolerances.

        g' = g + dR HN, so the prediction is dR g.v + dR^2 (v.HN) / 2. The losses are averaged
        over the ranks of a process group, as DDP and FSDP2 average the gradients: every rank
        then takes the same decision.
        """
        slopes = torch.stack([self.main_dot(vector), dot(vector, hvp)])  # g.v, v.HN
        losses = torch.stack([torch.as_tensor(x, device=slopes.device).detach().reshape(()).to(
            slopes.dtype) for x in (self.loss, loss)])
        main, displaced = _mean_over_ranks(losses).tolist()
        slope, curvature = slopes.tolist()
        change = displaced - main
        predicted = dr * slope + 0.5 * dr * dr * curvature
        # the size of the terms, which do not cancel as their sum may: near a degenerate
        # saddle (a cubic) the loss changes by dR^3 terms of the size of the curvature's
        size = 0.5 * dr * (abs(slope) + abs(slope + dr * curvature) + dr * abs(curvature))
        scales = (1.0,) if self.loss_scale is None else (1.0, self.loss_scale)
        misses = [abs(change / s - predicted) for s in scales]
        tolerance = [CONSISTENCY_RTOL * max(abs(main), abs(displaced)) / s
                     + CONSISTENCY_PTOL * size for s in scales]
        if all(miss > tol for miss, tol in zip(misses, tolerance)):
            raise InconsistentProbe(
                f"loss {main:.6g} at theta, {displaced:.6g} at theta + {dr:.3g} v: a change of "
                f"{change:.3g}, where the gradients predict {predicted:.3g}")

    def _restore_params(self) -> None:
        if not self.displaced:  # every hvp restores at once: no second parameter copy
            return
        self.displaced = False
        with torch.no_grad():
            if self.swap:
                for p, origin in zip(self.params, self.saved):
                    p.data = origin
            else:
                copy_(self.params, self.saved)

    def _restore_grads(self) -> None:
        for p, g in zip(self.params, self.grads):
            p.grad = g
        with torch.no_grad():
            for i in self.overwritable:
                self.grads[i].copy_(self.main[i])


def _mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The mean over the default process group's ranks (itself outside of one)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / dist.get_world_size()


def is_scalar_loss(value) -> bool:
    """Whether a closure's return value is a loss DEO can read: a number or a one-element
    tensor."""
    return (isinstance(value, torch.Tensor) and value.numel() == 1) or (
        isinstance(value, numbers.Real) and not isinstance(value, bool))


def _is_finite(value) -> bool:
    # A closure may return None; then only the gradients are checked.
    return value is None or bool(torch.isfinite(torch.as_tensor(value)).all())
