r"""DEO: a torch.optim.Optimizer that wraps any base optimizer with the dimer correction."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import dimer
from .arguments import build_base, check_settings, default_displacement
from .corrections import paper_correction_
from .distributed import dot, norm
from .probe_context import capture_rng_state, frozen_module_buffers, restore_rng_state

_DIRECTION = "direction"  # per-parameter state key of N
_SAVED_DIRECTION = "deo_direction"  # its key inside state_dict()["state"][index]

_MISSING_CLOSURE = (
    "DEO.step() needs a closure on probe steps (steps 0, interval, 2*interval, ...; this is "
    "step {step} with interval={interval}): DEO evaluates the gradient a second time at the "
    "displaced parameters on the same batch. Pass step(closure) where closure() zeroes the "
    "gradients, computes the loss on the current batch, calls loss.backward() and returns the "
    "loss. Without a closure DEO uses the gradients already in .grad, which only works on the "
    "other steps."
)


class DEO(Optimizer):
    r"""Dimer-Enhanced Optimization around any base optimizer (arXiv 2507.19968).

    DEO keeps a unit vector N over ALL parameters (one vector, as in the paper) that
    estimates the Hessian's minimum-curvature direction. Every ``interval`` steps (steps 0,
    interval, 2 interval, ...) it probes:

    .. math::
        g &= \nabla L(\theta), \qquad g' = \nabla L(\theta + dR\,N)\ \text{(same batch)}\\
        HN &= (g' - g) / dR, \qquad C = N^\top HN, \qquad F = -(HN - C\,N)\\
        N &\leftarrow \mathrm{normalize}(N + \eta_{rot} F) \qquad (\texttt{rotation="oja"})

    and on every step it hands the base optimizer the corrected gradient

    .. math::
        \tilde g = g - \alpha\,(g \cdot N)\,N, \qquad \text{then, if set, }
        \tilde g \leftarrow \mathrm{clip}(\tilde g, \texttt{max\_grad\_norm}).

    Calling convention (torch.optim's closure convention, which Lightning relies on)::

        opt = deo.DEO(model.parameters(), base=torch.optim.AdamW, lr=1e-3, weight_decay=0.1)
        for x, y in loader:
            def closure():
                opt.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                return loss
            loss = opt.step(closure)   # calls closure once, twice on probe steps

    ``step(closure)`` runs the closure under ``torch.enable_grad()`` at the current
    parameters and, on probe steps, once more at theta + dR N with the RNG state of the first
    call (same dropout masks) and with every module buffer (BatchNorm statistics) restored
    afterwards. Parameters are restored from a saved copy, so ``alpha=0`` is bit-identical to
    the base optimizer. ``step()`` without a closure uses the gradients in ``.grad``; on a
    probe step it raises ``RuntimeError``.

    Gradient clipping: clip with ``max_grad_norm=``, not with ``clip_grad_norm_`` before
    ``step()``. DEO computes the finite difference (g' - g) / dR from raw gradients it
    evaluates itself; clipping g outside but not g' mixes two kinds of gradient and turns the
    difference into noise. DEO clips after the finite difference and the correction.

    Args:
        params: parameters or param groups, as for any optimizer; ``None`` when ``base`` is a
            ready optimizer instance (its param groups are used).
        base: a ``torch.optim.Optimizer`` subclass (built with ``params`` and
            ``**base_kwargs``) or a ready instance. Default: ``torch.optim.AdamW``.
        alpha: correction strength, any finite number (paper: 5.0; 0 gives the base optimizer).
        interval: probe every ``interval`` steps, an integer >= 1 (paper: 10).
        displacement: dR > 0; ``None`` uses 10 x the first group's lr at construction.
        rotation_lr: step size of the ``"oja"`` rotation, >= 0 (paper: 1e-3).
        rotation: rotation rule of N, one of ``dimer.ROTATION_RULES`` (``"oja"``).
        seed: seed of the random initial N; identical on every rank for the same seed.
        scope: ``"global"`` (one N over all parameters, as the paper) or ``"tensor"`` (one unit
            N per parameter tensor, as the authors' code; ``curvature`` is then the minimum
            over tensors).
        max_grad_norm: if set (> 0), clip the corrected gradient to this total norm.
        **base_kwargs: passed to ``base`` when it is a class (e.g. ``lr=1e-3``).

    Attributes:
        curvature: 0-d tensor, the curvature along N at the last probe (NaN before it).
        direction: list of tensors shaped like the parameters: N.
        stats: dict of 0-d tensors: ``curvature``; ``angle``, radians N turned at the last
            probe; ``grad_share``, |g.N| / |g| at the last probe step (after the rotation);
            ``probe_count``, displaced-gradient evaluations so far; ``skipped_probes``,
            probes whose loss or gradients were not finite (N kept as it was).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | None,
        base: type[Optimizer] | Optimizer = torch.optim.AdamW,
        *,
        alpha: float = 5.0,
        interval: int = 10,
        displacement: float | None = None,
        rotation_lr: float = 1e-3,
        rotation: str = "oja",
        seed: int = 0,
        scope: str = "global",
        max_grad_norm: float | None = None,
        **base_kwargs: Any,
    ) -> None:
        check_settings(alpha, interval, displacement, rotation_lr, rotation, seed, scope,
                       max_grad_norm)
        if isinstance(base, DEO) or (isinstance(base, type) and issubclass(base, DEO)):
            raise TypeError("base: DEO cannot wrap another DEO")
        self.base = build_base(params, base, base_kwargs)
        # Optimizer.__init__ registers the base's group dicts (it does not copy them); then
        # the wrapper adopts the base's list itself, so lr schedulers writing into
        # opt.param_groups and base.add_param_group are seen by both.
        super().__init__(self.base.param_groups, dict(self.base.defaults))
        self.param_groups = self.base.param_groups
        self.alpha = float(alpha)
        self.interval = int(interval)
        self.displacement = default_displacement(self.param_groups) if displacement is None \
            else float(displacement)
        self.rotation_lr = float(rotation_lr)
        self.rotation = rotation
        self.seed = int(seed)
        self.scope = scope
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.steps = 0  # DEO steps taken; probe steps are those with steps % interval == 0
        device = self._params()[0].device
        nan = torch.full((), math.nan, device=device)
        self._stats = {"curvature": nan, "angle": nan.clone(), "grad_share": nan.clone()}
        self._probe_count = 0
        self._skipped_probes = 0
        self._warned_nonfinite = False
        self._init_direction(self._params(), generator=torch.Generator().manual_seed(self.seed))

    # -- public read-outs -------------------------------------------------------------------

    @property
    def curvature(self) -> Tensor:
        return self._stats["curvature"]

    @property
    def direction(self) -> list[Tensor]:
        return [self.state[p][_DIRECTION] for p in self._params()]

    @property
    def stats(self) -> dict[str, Tensor]:
        return {**self._stats,
                "probe_count": torch.tensor(self._probe_count),
                "skipped_probes": torch.tensor(self._skipped_probes)}

    # -- the step ---------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        is_probe = self.steps % self.interval == 0
        if is_probe and closure is None:
            raise RuntimeError(_MISSING_CLOSURE.format(step=self.steps, interval=self.interval))
        rng_before = capture_rng_state() if is_probe else None
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if is_probe:
            self._probe(closure, rng_before)
        with_grad = [p for p in self._params() if p.grad is not None]
        if with_grad:
            self._correct([p.grad for p in with_grad],
                          [self.state[p][_DIRECTION] for p in with_grad], record=is_probe)
            if self.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(with_grad, self.max_grad_norm)
        self.base.step()
        self.steps += 1
        return loss

    def _probe(self, closure: Callable[[], Tensor], rng_before: dict) -> None:
        """Evaluate g' at theta + dR N on the same batch, then rotate N (design.md, sec. 1)."""
        params = self._params()
        direction = self.direction
        grads = [p.grad for p in params]
        saved = [p.detach().clone() for p in params]
        rng_after = capture_rng_state()
        for p in params:  # the probe's backward writes fresh tensors; the originals stay intact
            p.grad = None
        torch._foreach_add_(params, [n.to(p.dtype) for n, p in zip(direction, params)],
                            alpha=self.displacement)
        restore_rng_state(rng_before)
        try:
            with torch.enable_grad(), frozen_module_buffers():
                probe_loss = closure()
            displaced = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        finally:
            torch._foreach_copy_(params, saved)
            for p, g in zip(params, grads):
                p.grad = g
            restore_rng_state(rng_after)
        del saved
        self._probe_count += 1
        main = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]
        hvp = dimer.finite_difference_hvp_(displaced, main, self.displacement)
        # One host sync per probe (never on cheap steps): a non-finite HN must not reach N.
        if not (_is_finite(probe_loss) and _is_finite(norm(hvp))):
            self._skip_probe()
            return
        self._rotate(direction, hvp)

    def _rotate(self, direction: list[Tensor], hvp: list[Tensor]) -> None:
        rule = dimer.ROTATION_RULES[self.rotation]
        curvatures, cosines = [], []
        for block in self._blocks(len(direction)):
            old = [direction[i] for i in block]
            hvp_block = [hvp[i] for i in block]
            curv = dimer.curvature(old, hvp_block)
            new = rule(old, hvp_block, curv, self.rotation_lr)
            cosines.append(dot(old, new))
            torch._foreach_copy_(old, new)
            curvatures.append(curv)
        self._stats["curvature"] = torch.stack(curvatures).min()
        # In tensor scope the concatenation of k unit blocks, divided by sqrt(k), is a unit
        # vector, and its cosine with the rotated one is the mean of the blocks' cosines.
        cos = torch.stack(cosines).mean().clamp(-1.0, 1.0)
        self._stats["angle"] = torch.arccos(cos)

    def _correct(self, grads: list[Tensor], direction: list[Tensor], record: bool) -> None:
        # |g| costs one more pass over the gradients: measured on probe steps only.
        grad_norm = norm(grads) if record else None
        projections = [paper_correction_([grads[i] for i in block],
                                         [direction[i] for i in block], self.alpha)
                       for block in self._blocks(len(grads))]
        if record:  # norm of g's projection on span of the N blocks, relative to |g|
            self._stats["grad_share"] = norm(projections) / grad_norm

    def _skip_probe(self) -> None:
        self._skipped_probes += 1
        if not self._warned_nonfinite:
            self._warned_nonfinite = True
            warnings.warn(
                "DEO: the probe saw a non-finite loss or gradient; the rotation was skipped and "
                "N kept as it was (counted in stats['skipped_probes']; warned once).",
                RuntimeWarning, stacklevel=3)

    # -- N and its layout -------------------------------------------------------------------

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _blocks(self, count: int) -> list[list[int]]:
        if self.scope == "global":
            return [list(range(count))]
        return [[i] for i in range(count)]

    def _init_direction(self, params: list[Tensor], generator: torch.Generator) -> None:
        """A random unit N, drawn on the CPU from ``generator``: identical on every rank."""
        draws = [torch.randn(p.shape, generator=generator).to(p.device, _direction_dtype(p))
                 for p in params]
        for block in self._blocks(len(draws)):
            unit = dimer.normalize([draws[i] for i in block])
            for i, n in zip(block, unit):
                self.state[params[i]][_DIRECTION] = n

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self.param_groups is not self.base.param_groups:
            # Inside Optimizer.__init__ (whose list is still its own): the group already lives
            # in the base, so only register it here.
            super().add_param_group(param_group)
            return
        self.base.add_param_group(param_group)
        new = list(self.base.param_groups[-1]["params"])
        if self.scope == "tensor":
            generator = torch.Generator().manual_seed(self.seed + len(self._params()))
            self._init_direction(new, generator)
        else:  # zero components keep the global N a unit vector; rotation fills them in
            for p in new:
                self.state[p][_DIRECTION] = torch.zeros_like(p, dtype=_direction_dtype(p))

    # -- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict, with N per parameter and DEO's counters added.

        ``state[i]["deo_direction"]`` holds N for parameter i; ``"deo"`` holds the step
        counter, the probe counters, the last statistics and the settings.
        """
        sd = self.base.state_dict()
        state = dict(sd["state"])
        for i, p in enumerate(self._params()):
            state[i] = {**state.get(i, {}), _SAVED_DIRECTION: self.state[p][_DIRECTION]}
        sd["state"] = state
        sd["deo"] = {"steps": self.steps, "probe_count": self._probe_count,
                     "skipped_probes": self._skipped_probes, "stats": dict(self._stats),
                     "settings": self._settings()}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "deo" not in state_dict:
            raise ValueError("load_state_dict: not a DEO state dict (no 'deo' entry); to load a "
                             "plain optimizer's state use opt.base.load_state_dict(...)")
        saved = state_dict["deo"]
        if saved["settings"]["scope"] != self.scope:
            raise ValueError(f"load_state_dict: saved with scope={saved['settings']['scope']!r}, "
                             f"this optimizer has scope={self.scope!r}")
        base_state, directions = {}, {}
        for i, entry in state_dict["state"].items():
            entry = dict(entry)
            directions[i] = entry.pop(_SAVED_DIRECTION, None)
            if entry:
                base_state[i] = entry
        self.base.load_state_dict({**state_dict, "state": base_state})
        self.param_groups = self.base.param_groups  # the base built new group dicts
        for i, p in enumerate(self._params()):
            if directions.get(i) is not None:
                self.state[p][_DIRECTION].copy_(directions[i])
        self.steps = int(saved["steps"])
        self._probe_count = int(saved["probe_count"])
        self._skipped_probes = int(saved["skipped_probes"])
        device = self._params()[0].device
        self._stats = {k: v.detach().clone().to(device) for k, v in saved["stats"].items()}

    def _settings(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "interval": self.interval, "displacement": self.displacement,
                "rotation_lr": self.rotation_lr, "rotation": self.rotation, "seed": self.seed,
                "scope": self.scope, "max_grad_norm": self.max_grad_norm}

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self._settings().items())
        return f"DEO({settings},\n    base={self.base!r})"


# -- construction helpers --------------------------------------------------------------------

def _direction_dtype(p: Tensor) -> torch.dtype:
    # N in at least float32: a unit vector over millions of entries has tiny components.
    return torch.promote_types(p.dtype, torch.float32)


def _is_finite(value: Tensor | float | None) -> bool:
    # A closure may return None; then only the gradients are checked.
    return value is None or bool(torch.isfinite(torch.as_tensor(value)).all())
