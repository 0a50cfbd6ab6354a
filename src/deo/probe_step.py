"""The probe step, one displaced pass at a time: the rotation of N, then the escape trial.

``ProbeStep`` drives a rotation rule (dimer.py) and, with ``escape_rule="checked"``, the
escape trial (escape.py) over displaced-gradient evaluations (displaced.py). It does not
run the passes itself: ``next_pass()`` moves the parameters to where the next evaluation
needs them and says whether there is one, and ``finish_pass(loss)`` takes the gradients
that pass left. ``DEO.step(closure)`` runs the closure in between; ``DEO.first_step()`` and
``DEO.second_step()`` let a training loop run its own passes. Both therefore take the same
path, bit for bit.

It reads and writes only what it is given: the parameters, their gradients, and the
``DEOState`` (N, the rule's state, statistics and counters).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import escape
from .config import DEOConfig
from .dimer import Evaluations, Rotation, RuleSettings, blocks, working_dtype
from .displaced import DisplacedGradients, InconsistentProbe, NonFiniteProbe
from .displacement import AutocastWatch, displacement_for
from .distributed import copy_, dot
from .state import DEOState

MISSING_CLOSURE = (
    "DEO.step() needs a closure on this step ({why}; opt.probe_due() says when): DEO "
    "evaluates the gradient a second time at the displaced parameters on the same batch. Pass "
    "step(closure) where closure() zeroes the gradients, computes the loss on the current "
    "batch, calls loss.backward() and returns the loss; or run the passes yourself: "
    "opt.begin_step() before the main pass, then `while opt.first_step(loss): <the same "
    "batches again>; opt.second_step()` before opt.step(). With a GradScaler, pass it to DEO, "
    "opt.step(closure, grad_scaler=scaler), instead of calling scaler.step(opt).")


@dataclass
class StepPasses:
    """One step's passes, from ``DEO.begin_step()`` to ``DEO.step()``: the RNG state before
    the main pass (None off probe steps), the plan (probe, correct), the GradScaler, and the
    probe step in progress."""

    rng: dict | None
    plan: tuple[bool, bool] | None = None
    scaler: Any = None
    probe: ProbeStep | None = None
    autocast: AutocastWatch | None = None  # displacement="auto": the main pass's precision

    def start_probe(self, params: list[Tensor], state: DEOState, config: DEOConfig,
                    rule: Callable[..., Evaluations], loss: Any, main_scale: float) -> None:
        if self.rng is None:
            raise RuntimeError("DEO.first_step(): a probe step, but begin_step() was called "
                               "before it became one; call it before the main pass")
        scale = None if self.scaler is None else float(self.scaler.get_scale())
        compute_dtype = None if self.autocast is None else self.autocast.stop()
        self.probe = ProbeStep(params, state, config, rule, self.rng, loss, scale=scale,
                               main_scale=main_scale, compute_dtype=compute_dtype)

    def close(self) -> None:
        if self.autocast is not None:
            self.autocast.stop()
        if self.probe is not None:
            self.probe.close()


class ProbeStep:
    """One probe step. ``outcome`` once done: "rotated", "skipped" (a non-finite loss or
    gradient, N kept), "inconsistent" (the displaced loss disagreed, N kept) or "overflow"
    (non-finite under a GradScaler: the whole step is to be skipped)."""

    def __init__(self, params: list[Tensor], state: DEOState, config: DEOConfig,
                 rule: Callable[..., Evaluations], rng_before: dict, loss: Any, *,
                 scale: float | None = None, main_scale: float = 1.0,
                 compute_dtype: torch.dtype | None = None) -> None:
        self.params, self.state, self.config = params, state, config
        self.displacement = displacement_for(config, params, compute_dtype)
        self.rng_before = rng_before
        self.scale, self.main_scale = scale, main_scale
        self.settings = RuleSettings(budget=config.probes_per_update, lr=config.rotation_lr,
                                     memory=config.hessian_memory, window=config.ritz_window,
                                     blocks=tuple(map(tuple, blocks(params, config.scope))),
                                     largest=config.target == "max")
        # Rotations are computed in the gradient's precision (at least float32). Oja's rule
        # reads a narrower N as it is; the Ritz rule combines many vectors, so a bf16 N is
        # widened for it (a transient copy).
        self.precise = [working_dtype(p) for p in params]
        working = state.direction if config.rotation == "oja" else \
            as_dtypes(state.direction, self.precise)
        self.evaluations: Evaluations | None = rule(working, state.rule, self.settings)
        self.evaluator = self._evaluator(loss=loss)
        self.vector: list[Tensor] | None = None  # of the rotation's next evaluation
        self.trial: float | None = None  # the escape trial's signed length, while tried
        self.outcome: str | None = None
        try:
            self._advance(None)
        except BaseException:
            self.close()
            raise

    @property
    def done(self) -> bool:
        """Whether the step needs no further displaced pass."""
        return self.evaluations is None and self.trial is None

    @property
    def in_pass(self) -> bool:
        """Whether the parameters are displaced for a pass that ``finish_pass`` awaits."""
        return self.evaluator.length is not None

    def next_pass(self) -> bool:
        """Displace the parameters for the next evaluation; False when none is left."""
        if self.in_pass:
            raise RuntimeError("DEO.first_step(): the parameters are already displaced; run "
                               "the displaced pass, then opt.second_step()")
        if self.vector is not None:
            self.evaluator.displace(self.vector, self.displacement)
            return True
        if self.trial is not None:
            self.evaluator.displace(self.state.direction, self.trial)
            return True
        return False

    def finish_pass(self, loss: Any = None) -> None:
        """Take the gradients the displaced pass left (parameters and .grad restored)."""
        if self.trial is not None:
            self._finish_trial()
            return
        try:
            product = self.evaluator.collect(loss)
        except (InconsistentProbe, NonFiniteProbe) as failure:
            self._fail(failure)
            return
        except BaseException:
            self.close()
            raise
        self._advance(as_dtypes(product, self.precise))

    def close(self) -> None:
        """Restore parameters, gradients and RNG if a pass broke off (idempotent)."""
        self._end_rotation()
        self.trial = None

    # -- the rotation ------------------------------------------------------------------------

    def _advance(self, product: list[Tensor] | None) -> None:
        """Send the rule its product (None: start it); keep the vector it asks for next."""
        try:
            self.vector = next(self.evaluations) if product is None else \
                self.evaluations.send(product)
        except StopIteration as done:
            self.vector = None
            self._rotated(done.value)
        except NonFiniteProbe as failure:  # a rule that evaluates for itself (the oracle)
            self._fail(failure)

    def _rotated(self, result: Rotation) -> None:
        self._end_rotation()
        state = self.state
        state.extra_gradients += result.extra_gradients
        # N and -N are the same direction to DEO. In tensor scope the concatenation of k unit
        # blocks over sqrt(k) is a unit vector whose cosine is the mean of the blocks'.
        old = state.direction  # measured before N is overwritten: no copy of the old N
        cosines = [dot([old[i] for i in b], [result.direction[i] for i in b]).abs()
                   for b in self.settings.blocks]
        state.stats.angle = torch.arccos(torch.stack(cosines).mean().clamp(max=1.0))
        copy_(old, result.direction)
        state.rule = result.state
        state.stats.curvature = result.curvature
        self.outcome = "rotated"
        self._start_trial()

    def _fail(self, failure: ArithmeticError) -> None:
        self._end_rotation()
        self.state.extra_gradients += getattr(failure, "extra_gradients", 0)
        if isinstance(failure, InconsistentProbe):
            self.state.inconsistent_probes += 1
            self.outcome = "inconsistent"
            warn_once(self.state, "inconsistent", inconsistency_message(failure,
                                                                          self.displacement))
        elif self.scale is not None:  # loss scaling overflows now and then by design
            self.outcome = "overflow"
            return  # counted by the step, which is skipped (and may never come: the scaler)
        else:
            self.state.skipped_probes += 1
            self.outcome = "skipped"
            warn_once(self.state, "nonfinite", f"DEO: the probe saw a non-finite loss or "
                      f"gradient ({failure}); the rotation was skipped and N kept as it was "
                      f"(counted in stats['skipped_probes']; warned once).")
        self._start_trial()  # the step goes on, and so does its escape step

    def _end_rotation(self) -> None:
        """Count the evaluations, restore what a pass in progress changed, stop the rule."""
        self.state.extra_gradients += self.evaluator.count
        self.evaluator.count = 0
        self.evaluator.close()
        if self.evaluations is not None:
            self.evaluations.close()
        self.evaluations, self.vector = None, None

    # -- the checked escape trial (escape.py) ------------------------------------------------

    def _start_trial(self) -> None:
        config, state = self.config, self.state
        if not (config.escape_step > 0 and config.escape_rule in ("checked", "search")):
            return
        with_grad = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not with_grad:  # nothing to descend along
            return
        curvature = float(state.stats.curvature)
        self.with_grad, self.curvature = with_grad, curvature
        self.longest = escape.longest_step(config, self.displacement)
        if config.escape_rule == "search":
            self.slope = self._slope() if curvature < 0 else 0.0  # no sync without a search
            length = escape.first_search_length(config.escape_step, curvature, self.slope,
                                                self.displacement, self.longest) or None
            self.tried, self.travelled = 0, 0.0
        else:
            length, state.escape = escape.plan_trial(state.escape, config, curvature,
                                                     self.displacement)
            if length is not None:  # the slope only where a trial is made (a host sync)
                self.slope = self._slope()
        if length is not None:
            self._try(length)

    def _slope(self) -> float:
        """g . N at the parameters as they are now (the main pass's scale removed)."""
        return float(dot([self.params[i].grad for i in self.with_grad],
                         [self.state.direction[i] for i in self.with_grad])) / self.main_scale

    def _try(self, length: float, sign: float | None = None) -> None:
        """Open the trial of ``length`` along d = sign N from the current point; by default
        sign = -sign(g . N) (+1 where g . N = 0), so that d descends."""
        self.sign = sign if sign is not None else (-1.0 if self.slope > 0 else 1.0)
        self.length = length
        self.trial = self.sign * length  # theta + trial N
        self.evaluator = self._evaluator(loss=None)

    def _finish_trial(self) -> None:
        state, signed = self.state, self.trial
        try:
            change = self.evaluator.collect(check=False)  # (g' - g) / signed
        except NonFiniteProbe:
            change = None
        finally:
            self.evaluator.count = 0
            self.evaluator.close()
            self.trial = None
        # counted once the evaluation is done: a pass that raised was no trial
        state.escape_trials += 1
        state.extra_gradients += 1
        secant = None if change is None else float(dot(change, state.direction))
        slope = -abs(self.slope)
        if self.config.escape_rule == "search":
            ratio = -math.inf if secant is None else \
                escape.trust_ratio(slope, self.curvature, secant, self.length)
            kept = not ratio < escape.ACCEPT
        else:
            kept, state.escape = escape.judge_trial(state.escape, self.length, slope,
                                                    self.curvature, secant)
        if not kept:
            return
        state.escapes += 1
        with torch.no_grad():
            torch._foreach_add_(self.params, list(state.direction), alpha=signed)
            grads = [self.params[i].grad for i in self.with_grad]  # g' = g + t (g' - g) / t
            torch._foreach_add_(grads, [change[i] for i in self.with_grad],
                                alpha=signed * self.main_scale)
        if self.config.escape_rule == "search":
            self.tried += 1
            self.travelled += self.length
            self.slope = self._slope()  # g . N at the new point
            along = self.sign * self.slope  # the slope along d, the same d as before
            following = escape.next_search_length(self.length, ratio, along, self.tried,
                                                  self.travelled, self.longest)
            if following is not None:  # along < 0 here: -|g . N| is the slope along d
                self._try(following, self.sign)

    def _evaluator(self, loss: Any) -> DisplacedGradients:
        scale = 1.0 if self.scale is None else self.scale
        return DisplacedGradients(self.params, self.rng_before, loss=loss,
                                  loss_scale=self.scale, main_scale=self.main_scale,
                                  displaced_scale=scale).open()


def inconsistency_message(mismatch: InconsistentProbe, displacement: float) -> str:
    return (f"DEO: the displaced loss disagrees with its first-order prediction from the "
            f"gradients ({mismatch}); the closure most likely evaluated another batch on its "
            f"second call (a data loader or get_batch() inside the closure), or the "
            f"displacement {displacement:.3g} is too long for the loss to be near quadratic "
            f"over it. The rotation was skipped (counted in stats['inconsistent_probes']; "
            f"warned once). Draw the batch, and every micro-batch, before the passes.")


def warn_once(state: DEOState, kind: str, message: str) -> None:
    if kind in state.warned:
        return
    state.warned.add(kind)
    warnings.warn(message, RuntimeWarning, stacklevel=5)


def as_dtypes(tensors: list[Tensor], like: list[torch.dtype]) -> list[Tensor]:
    """Each tensor in its dtype of ``like`` (itself, not a copy, where it matches)."""
    return [t.to(dtype) for t, dtype in zip(tensors, like)]

