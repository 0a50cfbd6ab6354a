r"""DEO: a torch.optim.Optimizer that wraps any base optimizer with the dimer correction."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import arguments, checkpoint, dimer, policies, sharpness
from .amp import finite_after_unscale, main_grads_scale, record_overflow
from .config import FIELDS, DEOConfig, with_overrides
from .corrections import clip_, correct_and_clip_
from .displaced import capture_rng_state
from .displacement import AutocastWatch, displacement_for
from .escape import escape_along_negative_curvature_, longest_step
from .probe_step import MISSING_CLOSURE, StepPasses
from .state import RULE_STATES, DEOState, Statistics


class DEO(Optimizer):
    r"""Dimer-Enhanced Optimization around any base optimizer (arXiv 2507.19968).

    DEO keeps a unit vector N, over all parameters, that estimates the Hessian's
    minimum-curvature direction. On probe steps (every ``interval`` steps) it evaluates the
    gradient once more, at theta + dR N on the same batch, and turns N (``"oja"``):

    .. math::
        HN = (g' - g) / dR, \quad C = N^\top HN, \quad
        N \leftarrow \mathrm{normalize}(N + \eta_{rot}\,(C N - HN)),

    and on every step it hands the base optimizer :math:`g - \alpha (g\cdot N) N`, clipped
    to ``max_grad_norm`` if set. Settings: ``config`` (a ``DEOConfig``, e.g.
    ``DEOConfig(**deo.recommended(goal))``) with keyword overrides of its fields; other
    keywords go to ``base`` when it is a class; ``params=None`` when ``base`` is an instance.

    Two calling conventions, bit-identical where both apply (docs/usage.md): ``step(closure)``
    (called again on probe steps with the same RNG state, module buffers restored), or the
    passes in the loop: ``begin_step()`` before the main pass, ``while first_step(loss):
    <the same batches again>; second_step()``, then ``step()`` or ``scaler.step(opt)``. Every
    pass of a step must see the same batch: draw it before the passes.

    Read-outs: ``config``, ``deo_state`` (N, the rule's state, counters), ``steps``,
    ``curvature``, ``direction``, ``stats`` (0-d tensors), and each setting as an attribute.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]] | None,
                 base: type[Optimizer] | Optimizer = torch.optim.AdamW,
                 config: DEOConfig | None = None, **overrides: Any) -> None:
        arguments.check_base(base)
        config, base_kwargs = with_overrides(config, overrides)
        if isinstance(base, DEO) or (isinstance(base, type) and issubclass(base, DEO)):
            raise TypeError("base: DEO cannot wrap another DEO")
        self.base = arguments.build_base(params, base, base_kwargs)
        arguments.check_params(self.base)
        # param_groups is the base's own list (a property): Optimizer.__init__ only registers
        # the hooks and an empty state here; schedulers and base.load_state_dict are seen by both
        super().__init__(self.base.param_groups, dict(self.base.defaults))
        self._constructed = True
        self.config = config = arguments.with_displacement(config, self.param_groups)
        self.rule = dimer.ROTATION_RULES[config.rotation]  # a subclass may set its own
        self._compiled_cheap_step: Callable[[], None] | None = None
        self._passes: StepPasses | None = None  # this step's, from begin_step() to step()
        self._checked_gradients = False
        params_ = self._params()
        self.deo_state = DEOState(
            direction=dimer.random_direction(params_, config.seed, config.scope,
                                             config.direction_dtype),
            rule=RULE_STATES[config.rotation](), stats=Statistics.unknown(params_[0].device))

    def __getattr__(self, name: str) -> Any:
        if name in FIELDS and "config" in self.__dict__:  # opt.interval is opt.config.interval
            return getattr(self.__dict__["config"], name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def steps(self) -> int:
        """DEO steps taken (a step skipped by a GradScaler is not taken)."""
        return self.deo_state.steps

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The base optimizer's param_groups, the very list (schedulers write into it)."""
        return self.base.param_groups

    @param_groups.setter
    def param_groups(self, groups: list[dict[str, Any]]) -> None:
        if self.__dict__.get("_constructed"):  # Optimizer.__init__'s empty list: ignored
            self.base.param_groups = groups

    def __getstate__(self) -> dict[str, Any]:
        """Everything but the hooks (as torch.optim drops them), the compiled step and a
        step in progress: a deepcopy, pickle or ``torch.save`` of DEO is a working DEO."""
        state = {k: v for k, v in self.__dict__.items() if not k.endswith("_hooks")}
        return {**state, "_compiled_cheap_step": None, "_passes": None}

    @property
    def curvature(self) -> Tensor:
        return self.deo_state.stats.curvature

    @property
    def direction(self) -> list[Tensor]:
        return self.deo_state.direction

    @property
    def stats(self) -> dict[str, Tensor]:
        return self.deo_state.read_outs()

    def settings(self) -> dict[str, Any]:
        """DEO's own settings, plain values (the base optimizer's are in ``param_groups``)."""
        return self.config.to_dict()

    def __repr__(self) -> str:
        return f"DEO({self.config!r},\n    base={self.base!r})"

    # -- the step ----------------------------------------------------------------------------

    def probe_due(self) -> bool:
        """Whether this step may evaluate displaced gradients, so ``step()`` needs a closure
        (or the passes of ``first_step``): the probe steps of the schedule, and every step
        with ``trigger="spike"``, where the loss decides."""
        return policies.probe_due(self.config, self.deo_state.steps, self.deo_state.schedule)

    def begin_step(self) -> None:
        """Call before the main pass of a step run without a closure: DEO remembers the RNG
        state, so that the displaced passes see the main pass's dropout masks."""
        if self._passes is not None:  # passes that broke off (an exception): restore
            self._passes.close()
        due = self.probe_due()
        self._passes = StepPasses(capture_rng_state() if due else None)
        if due and self.config.displacement == "auto":  # dR follows the main pass's precision
            self._passes.autocast = AutocastWatch()

    @torch.no_grad()
    def first_step(self, loss: Any = None, *,
                   grad_scaler: torch.amp.GradScaler | None = None) -> bool:
        """After the main pass: True if DEO has moved the parameters for a displaced pass,
        which the caller runs next on the same batches, then calls ``second_step()``; False
        once the step needs no further pass. ``loss``: the main pass's (checked against the
        displaced one; ``trigger="spike"`` reads it)."""
        passes = self._passes
        if passes is None:
            raise RuntimeError("DEO.first_step(): call opt.begin_step() before the main pass")
        if passes.plan is None:
            passes.plan, passes.scaler = self._plan(loss), _enabled(grad_scaler)
        if not passes.plan[0] and passes.autocast is not None:  # no probe after all
            passes.autocast.stop()
        if passes.plan[0] and passes.probe is None:
            passes.start_probe(self._params(), self.deo_state, self.config, self.rule, loss,
                               main_grads_scale(passes.scaler, self))
        return passes.probe is not None and passes.probe.next_pass()

    @torch.no_grad()
    def second_step(self, loss: Any = None) -> None:
        """After a displaced pass: take its gradients; parameters and .grad are restored."""
        probe = self._passes.probe if self._passes is not None else None
        if probe is None or not probe.in_pass:
            raise RuntimeError("DEO.second_step(): no displaced pass is in progress "
                               "(first_step() returned False or was not called)")
        probe.finish_pass(loss)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, *,
             grad_scaler: torch.amp.GradScaler | None = None) -> Tensor | None:
        """One DEO step. With an enabled ``grad_scaler`` the closure backpropagates the scaled
        loss and DEO takes the place of ``scaler.step(opt)`` and ``scaler.update()``: it
        unscales, skips the whole step on inf/NaN (displaced gradients included, counted in
        ``skipped_probes``) and updates the scaler (docs/usage.md)."""
        scaler, loss = _enabled(grad_scaler), None
        if closure is not None:
            self.begin_step()
            try:
                with torch.enable_grad():
                    loss = closure()
                self._passes.plan, self._passes.scaler = self._plan(loss), scaler
                if scaler is not None:
                    scaler.unscale_(self)
                    if not finite_after_unscale(scaler, self):
                        self._passes.close()  # nothing was displaced: this ends the watch
                        self._passes = None
                        scaler.update()
                        return loss
                while self.first_step(loss):
                    with torch.enable_grad():
                        displaced = closure()
                    self.second_step(displaced)
            except BaseException:
                # a closure that raised (OOM, Ctrl-C): the parameters go back to where the
                # step began and the autocast hook is removed before the error propagates
                if self._passes is not None:
                    self._passes.close()
                    self._passes = None
                raise
        passes, self._passes = self._passes or StepPasses(None), None
        if passes.autocast is not None:  # the step is decided: no hook outlives it
            passes.autocast.stop()
        if passes.plan is None:
            if self.probe_due():
                raise RuntimeError(MISSING_CLOSURE.format(
                    why=policies.why_due(self.config, self.steps)))
            passes.plan = self._plan(None)
        probe = passes.probe
        if probe is not None and not probe.done:
            probe.close()
            raise RuntimeError("DEO.step(): this probe step's passes are not finished: call "
                               "opt.second_step() after each displaced pass, until "
                               "opt.first_step() returns False (the parameters are restored)")
        if probe is not None and probe.outcome == "overflow":
            self.deo_state.skipped_probes += 1
            record_overflow(passes.scaler, self)
        else:
            self._update(*passes.plan, displacement=None if probe is None else probe.displacement)
        if scaler is not None:
            scaler.update()
        return loss

    def _plan(self, loss: Any) -> tuple[bool, bool]:
        """(this step probes, this step's gradient is corrected)."""
        if not self._checked_gradients:  # sparse gradients are refused at the first step
            arguments.check_gradients(self._params())
            self._checked_gradients = True
        s = self.deo_state
        *plan, s.spikes = policies.plan(self.config, s.steps, s.schedule, s.spikes, loss)
        return tuple(plan)

    def _update(self, is_probe: bool, correct: bool, displacement: float | None = None) -> None:
        """Correct (and clip) the gradients in .grad, let the base step, escape, schedule.
        ``displacement``: the dR this step's probe measured with (for the escape's cap)."""
        c, s, params = self.config, self.deo_state, self._params()
        # rotation="update": the update before a probe step is the probe's direction
        track = c.rotation == "update" and (
            is_probe or policies.probe_due(c, s.steps + 1, s.schedule))
        before = [p.detach().clone() for p in params] if track else None
        projection = None
        if not correct:  # hybrid DEO between triggers: the base optimizer alone
            clip_(params, c.max_grad_norm)
            self.base.step()
        elif c.compile_step and not is_probe:
            if self._compiled_cheap_step is None:
                self._compiled_cheap_step = torch.compile(self._correct_and_step)
            self._compiled_cheap_step()
        else:
            projection = self._correct_and_step(record=is_probe)
            if is_probe and c.escape_step > 0 and c.escape_rule == "fixed" \
                    and projection is not None:
                # the cap is k x the dR the curvature was measured with (under autocast
                # that counts its dtype), and only computed where there is one: no host sync
                if c.escape_trust is not None and displacement is None:
                    displacement = displacement_for(c, params)
                longest = None if displacement is None else longest_step(c, displacement)
                escape_along_negative_curvature_(params, s.direction, projection,
                                                 s.stats.curvature, c.escape_step, longest)
        if track:
            s.rule, _ = sharpness.after_step_(
                params, before, s.direction, None if projection is None else float(projection),
                float(s.stats.curvature), is_probe and c.step_rule == "sharpness")
        if is_probe:
            s.schedule = policies.after_probe(c, s.steps, s.schedule, float(s.stats.angle),
                                              s.rule.cycle_complete)
        s.steps += 1

    def _correct_and_step(self, record: bool = False) -> Tensor | None:
        """Correct the gradients, clip, step the base; g . N (global scope) when recorded."""
        c, s = self.config, self.deo_state
        alpha = policies.effective_alpha(c.alpha_rule, c.alpha, s.stats.curvature)
        projection, share = correct_and_clip_(self._params(), s.direction, c.scope, alpha,
                                              c.max_grad_norm, record)
        if record and share is not None:
            s.stats.grad_share = share
        self.base.step()
        return projection

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not self.__dict__.get("_constructed"):
            return  # inside Optimizer.__init__: the groups already live in the base
        new = arguments.add_checked_group(self.base, param_group)
        s, c = self.deo_state, self.config
        s.direction.extend(dimer.added_direction(new, (c.seed + len(s.direction)) % 2**63,
                                                 c.scope, c.direction_dtype))
        s.rule = RULE_STATES[c.rotation]()  # its carried vectors cover the old parameters

    def state_dict(self) -> dict[str, Any]:
        """The base's state dict with DEO's state added (``deo_*`` entries, ``"deo"``)."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        state_dict = checkpoint.to_state_dict(self.base, self.deo_state, self.settings())
        return _chain(self._optimizer_state_dict_post_hooks, self, state_dict)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """All of a DEO state dict or, raising ValueError (not DEO's, damaged, other settings;
        the seed is the checkpoint's), nothing. ``deo.base_state_dict(sd)`` gives the base's."""
        state_dict = _chain(self._optimizer_load_state_dict_pre_hooks, self, state_dict.copy())
        loaded, loaded_seed = checkpoint.from_state_dict(state_dict, self.deo_state,
                                                         self._params(), self.settings())
        self.base.load_state_dict(checkpoint.base_state_dict(state_dict))  # checks the groups
        self.deo_state = checkpoint.adopt(self.deo_state, loaded)  # N keeps its tensors
        self.config = dataclasses.replace(self.config, seed=loaded_seed)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)


def _enabled(scaler: torch.amp.GradScaler | None) -> torch.amp.GradScaler | None:
    return scaler if scaler is not None and scaler.is_enabled() else None


def _chain(hooks: dict, opt: DEO, state_dict: dict[str, Any]) -> dict[str, Any]:
    """Run torch.optim's state-dict hooks in order; a hook may return a replacement."""
    for hook in hooks.values():
        result = hook(opt, state_dict)
        state_dict = state_dict if result is None else result
    return state_dict
