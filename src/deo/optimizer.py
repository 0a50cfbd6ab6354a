r"""DEO: a torch.optim.Optimizer that wraps any base optimizer with the dimer correction."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import checkpoint, dimer, escape, policies, rotation_step
from .amp import finite_after_unscale, unscaling
from .arguments import (
    build_base,
    check_base,
    check_displacement,
    check_gradients,
    check_params,
    check_settings,
    default_displacement,
    loss_value,
)
from .corrections import escape_along_negative_curvature_, paper_correction_
from .distributed import norm, shard_like
from .probe_context import capture_rng_state

_DIRECTION = checkpoint.DIRECTION  # per-parameter state key of N

_MISSING_CLOSURE = (
    "DEO.step() needs a closure on this step ({why}; opt.probe_due() says when): DEO "
    "evaluates the gradient a second time at the displaced parameters on the same batch. Pass "
    "step(closure) where closure() zeroes the gradients, computes the loss on the current "
    "batch, calls loss.backward() and returns the loss. Without a closure DEO uses the "
    "gradients already in .grad, which only works on steps where opt.probe_due() is False. "
    "With a GradScaler, pass it to DEO, opt.step(closure, grad_scaler=scaler), instead of "
    "calling scaler.step(opt)."
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
    probe step (``probe_due()``) it raises ``RuntimeError``.

    The closure must evaluate the same batch on every call: draw the batch (and every
    micro-batch) before defining it. A displaced loss that disagrees with the trapezoid rule
    L + dR (g + g').N / 2 (another batch) is warned of once, counted in
    ``stats["inconsistent_probes"]``, and that rotation is skipped; a second call that leaves
    no gradient raises ``RuntimeError``.

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
        rotation: how N turns, one of ``dimer.ROTATION_RULES``: ``"oja"`` (the paper's rule,
            correct sign) or ``"ritz"`` (Rayleigh-Ritz, no step size, ``scope="global"``).
        probes_per_update: displaced-gradient evaluations per probe step, an integer >= 1
            (default 1: one extra gradient per ``interval`` steps, the paper's cost).
            ``"oja"`` takes one rotation step per evaluation; ``"ritz"`` with 1 spreads each
            rotation over two probe steps (on a d=200 quadratic it needs as many evaluations
            as with 2).
        hessian_memory: ``"ritz"`` only, in [0, 1): weight of earlier batches in the Hessian
            products it carries between probe steps (0: the latest batch only).
        ritz_window: ``"ritz"`` only, an integer >= 1: batches whose product H W with the
            expansion vector W is averaged before each Ritz update (1: update at once).
        seed: seed of the random initial N; identical on every rank for the same seed.
        scope: ``"global"`` (one N over all parameters, as the paper) or ``"tensor"`` (one unit
            N per parameter tensor, as the authors' code; ``curvature`` is then the minimum
            over tensors).
        max_grad_norm: if set (> 0), clip the corrected gradient to this total norm.
        direction_dtype: dtype in which N is kept, a floating ``torch.dtype``; ``None`` (the
            default) keeps it in the parameter's dtype, at least float32. ``torch.bfloat16``
            halves N's memory and the cheap step's reads of it; rotations are computed in the
            gradient's precision and rounded into N (accuracy: benchmarks/README.md).
        alpha_rule: ``"fixed"`` (paper) or ``"curvature"`` (alpha only while C < 0), see
            :mod:`deo.policies`.
        interval_rule: ``"fixed"`` (a probe every ``interval`` steps, paper) or ``"angle"``
            (the gap adapts to how fast N turns, between 1 and 4 x ``interval``).
        trigger: ``"always"`` (paper) or ``"spike"`` (hybrid: the plain base optimizer until
            the loss jumps, then a probe and ``interval`` corrected steps; needs a closure on
            every step and reads the loss on the host every step).
        escape_step: ``s >= 0``; on probe steps with C < 0, also move the parameters by
            ``s |C|`` along N, downhill (-sign(g.N) N): the negative-curvature step of
            saddle-escape methods, which the projection lacks. 0 (default): off.
        escape_trust: ``None`` or ``k > 0``: cap the escape step at ``k`` displacements
            (``k dR``), the distance over which the probe measured the curvature; ``None``
            (default): no cap.
        escape_rule: ``"fixed"`` (default: take the escape step after the base step, no
            extra evaluation) or ``"checked"`` (a trust region, :mod:`deo.escape`: try the
            step before the base step, keep it only if the gradients at both ends say the
            loss fell; one more gradient evaluation per trial).
        compile_step: run the cheap step (correction, clipping and the base step) through
            ``torch.compile``, compiled at the first non-probe step. Keep the learning rate a
            tensor (``lr=torch.tensor(1e-3)``) if a scheduler changes it, or every new value
            recompiles (as for any compiled torch optimizer). Probe steps run eagerly.
        **base_kwargs: passed to ``base`` when it is a class (e.g. ``lr=1e-3``).

    Attributes:
        curvature: 0-d tensor, the curvature along N at the last probe (NaN before it).
        direction: list of tensors shaped like the parameters: N.
        stats: dict of 0-d tensors: ``curvature``; ``angle``, radians N turned at the last
            probe; ``grad_share``, |g.N| / |g| at the last probe step (after the rotation);
            ``probe_count``, displaced-gradient evaluations so far (the checked escape's trials
            included); ``skipped_probes``, probes whose loss or gradients were not finite (N
            kept as it was); ``inconsistent_probes``, rotations skipped because the displaced
            loss disagreed with the gradients; ``escapes`` and ``escape_trials``, checked
            escape steps kept and tried.
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
        probes_per_update: int = 1,
        hessian_memory: float = 0.0,
        ritz_window: int = 1,
        seed: int = 0,
        scope: str = "global",
        max_grad_norm: float | None = None,
        direction_dtype: torch.dtype | None = None,
        compile_step: bool = False,
        alpha_rule: str = "fixed",
        interval_rule: str = "fixed",
        trigger: str = "always",
        escape_step: float = 0.0,
        escape_trust: float | None = None,
        escape_rule: str = "fixed",
        **base_kwargs: Any,
    ) -> None:
        check_base(base)
        check_settings(alpha=alpha, interval=interval, displacement=displacement,
                       rotation_lr=rotation_lr, rotation=rotation,
                       probes_per_update=probes_per_update, hessian_memory=hessian_memory,
                       ritz_window=ritz_window,
                       seed=seed, scope=scope, max_grad_norm=max_grad_norm,
                       direction_dtype=direction_dtype, compile_step=compile_step,
                       alpha_rule=alpha_rule, interval_rule=interval_rule, trigger=trigger,
                       escape_step=escape_step, escape_trust=escape_trust,
                       escape_rule=escape_rule)
        if isinstance(base, DEO) or (isinstance(base, type) and issubclass(base, DEO)):
            raise TypeError("base: DEO cannot wrap another DEO")
        self.base = build_base(params, base, base_kwargs)
        check_params(self.base)
        # param_groups is the base's own list (a property): Optimizer.__init__ only registers
        # the hooks and an empty state here, and lr schedulers writing into opt.param_groups,
        # base.add_param_group and base.load_state_dict are all seen by both.
        super().__init__(self.base.param_groups, dict(self.base.defaults))
        self._constructed = True
        self.alpha = float(alpha)
        self.interval = int(interval)
        self.displacement = default_displacement(self.param_groups) if displacement is None \
            else float(displacement)
        check_displacement(self.displacement, self._params())
        self.rotation_lr = float(rotation_lr)
        self.rotation = rotation
        self.probes_per_update = int(probes_per_update)
        self.hessian_memory = float(hessian_memory)
        self.ritz_window = int(ritz_window)
        self.seed = int(seed)
        self.scope = scope
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.direction_dtype = direction_dtype
        self.compile_step = bool(compile_step)
        self._compiled_cheap_step: Callable[[], None] | None = None
        self.alpha_rule, self.interval_rule, self.trigger = alpha_rule, interval_rule, trigger
        self.escape_step = float(escape_step)
        self.escape_trust = None if escape_trust is None else float(escape_trust)
        self.escape_rule = escape_rule
        self._escape_radius = math.inf  # escape_rule="checked": the trust radius
        self._escapes, self._escape_trials = 0, 0
        self.steps = 0  # DEO steps taken
        self._next_probe, self._probe_gap = 0, 1  # interval_rule="angle"
        self._spikes = policies.SpikeTrigger()  # trigger="spike"
        device = self._params()[0].device
        nan = torch.full((), math.nan, device=device)
        self._stats = {"curvature": nan, "angle": nan.clone(), "grad_share": nan.clone()}
        self._probe_count = 0
        self._skipped_probes = 0
        self._inconsistent_probes = 0
        self._warned_nonfinite = False
        self._warned_inconsistent = False
        self._checked_gradients = False  # sparse gradients are refused at the first step
        self._rule_scalars: dict[str, Any] = {}  # e.g. the ritz cycle's phase
        self._init_direction(self._params(), generator=torch.Generator().manual_seed(self.seed))

    # -- the base's param_groups, pickling -----------------------------------------------

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The base optimizer's param_groups, the very list (schedulers write into it)."""
        return self.base.param_groups

    @param_groups.setter
    def param_groups(self, groups: list[dict[str, Any]]) -> None:
        # Optimizer.__init__ assigns an empty list before registering the groups: the base
        # already holds them. Any other assignment replaces the base's list, as it would on a
        # plain optimizer.
        if self.__dict__.get("_constructed"):
            self.base.param_groups = groups

    def __getstate__(self) -> dict[str, Any]:
        """Everything but the hooks (as torch.optim drops them) and the compiled step: a
        deepcopy, pickle or ``torch.save`` of DEO is a working DEO."""
        state = {k: v for k, v in self.__dict__.items() if not k.endswith("_hooks")}
        state["_compiled_cheap_step"] = None
        return state

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
                "skipped_probes": torch.tensor(self._skipped_probes),
                "inconsistent_probes": torch.tensor(self._inconsistent_probes),
                "escapes": torch.tensor(self._escapes),
                "escape_trials": torch.tensor(self._escape_trials)}

    # -- the step ---------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, *,
             grad_scaler: torch.amp.GradScaler | None = None) -> Tensor | None:
        """One DEO step; ``grad_scaler``: fp16 loss scaling, see below.

        With an enabled ``grad_scaler`` the closure must backpropagate the SCALED loss
        (``scaler.scale(loss).backward()``) and DEO takes the place of ``scaler.step(opt)`` and
        ``scaler.update()``: it unscales the gradients (``scaler.unscale_(self)``), skips the
        whole step (base step and rotation; ``steps`` does not advance) if the scaler found
        inf/NaN, unscales the displaced gradients of a probe by the same scale, skips the whole
        step as well if those are not finite (counted in ``skipped_probes``, reported to the
        scaler as an overflow), and calls ``scaler.update()``. Like ``scaler.step``, this
        reads the inf flag on the host once per step.
        """
        due = self.probe_due()
        if closure is None and due:
            raise RuntimeError(_MISSING_CLOSURE.format(why=self._why_due()))
        scaler = grad_scaler if grad_scaler is not None and grad_scaler.is_enabled() else None
        rng_before = capture_rng_state() if due else None
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not self._checked_gradients:
            check_gradients(self._params())
            self._checked_gradients = True
        is_probe, correct = self._decide(due, loss)
        if scaler is None:
            if is_probe:
                self._probe(closure, rng_before, loss)
            self._update(is_probe, correct, closure, rng_before)
            return loss
        scaler.unscale_(self)
        closure = unscaling(closure, self._params(), scaler) if is_probe else closure
        if finite_after_unscale(scaler, self) and (
                not is_probe or self._probe(closure, rng_before, loss, scaler)):
            self._update(is_probe, correct, closure, rng_before)
        scaler.update()
        return loss

    def probe_due(self) -> bool:
        """Whether this step may evaluate displaced gradients, so ``step()`` needs a closure.

        True on the probe steps of the schedule: steps 0, interval, 2 interval, ... with
        ``interval_rule="fixed"``, the steps the probe gap points to with ``"angle"``; and on
        every step with ``trigger="spike"``, where the loss the closure returns decides. On
        the other steps ``step()`` may be called without a closure (gradients in .grad).
        """
        if self.trigger != "always":  # the trigger decides, after the loss is known
            return True
        if self.interval_rule == "fixed":
            return self.steps % self.interval == 0
        return self.steps >= self._next_probe

    def _why_due(self) -> str:
        if self.trigger != "always":
            return f"step {self.steps}; trigger={self.trigger!r} reads the loss on every step"
        if self.interval_rule == "fixed":
            return f"step {self.steps} with interval={self.interval}"
        return f"step {self.steps}, a probe step of interval_rule={self.interval_rule!r}"

    def _decide(self, due: bool, loss: Tensor | None) -> tuple[bool, bool]:
        """(probe on this step, correct this step's gradient)."""
        if self.trigger == "always":
            return due, True
        value = loss_value(loss, f"trigger={self.trigger!r}")  # one host sync
        jump = self._spikes.observe(self.steps, value, self.interval)
        return jump, self._spikes.active(self.steps)

    def _update(self, is_probe: bool, correct: bool = True,
                closure: Callable[[], Tensor] | None = None, rng_before: dict | None = None,
                ) -> None:
        """Correct (and clip) the gradients in .grad, then let the base optimizer step."""
        escaping = is_probe and self.escape_step > 0
        if escaping and self.escape_rule == "checked":
            escape.try_escape(self, closure, rng_before)
        if not correct:  # hybrid DEO between triggers: the base optimizer alone
            self._clip_and_step()
        elif self.compile_step and not is_probe:
            if self._compiled_cheap_step is None:
                self._compiled_cheap_step = torch.compile(self._correct_and_step)
            self._compiled_cheap_step()
        else:
            projection = self._correct_and_step(record=is_probe)
            if escaping and self.escape_rule == "fixed" and projection is not None:
                escape_along_negative_curvature_(self._params(), self.direction, projection,
                                                 self.curvature, self.escape_step,
                                                 escape.longest_step(self))
        if is_probe and self.interval_rule == "angle":
            # A Ritz cycle spread over probe steps (budget 1) only turns N when it completes:
            # the gap adapts to the angles of completed rotations.
            if self._rule_scalars.get("phase", 0) == 0:
                self._probe_gap = policies.next_probe_gap(
                    self._probe_gap, float(self._stats["angle"]), self.interval)
            self._next_probe = self.steps + self._probe_gap
        self.steps += 1

    def _correct_and_step(self, record: bool = False) -> Tensor | None:
        """Correct the gradients, clip, step the base; g . N (global scope) when recorded."""
        with_grad = [p for p in self._params() if p.grad is not None]
        projection = None
        if with_grad:
            projection = self._correct([p.grad for p in with_grad],
                                       [self.state[p][_DIRECTION] for p in with_grad],
                                       record=record)
        self._clip_and_step(with_grad)
        return projection

    def _clip_and_step(self, with_grad: list[Tensor] | None = None) -> None:
        if self.max_grad_norm is not None:
            with_grad = with_grad if with_grad is not None else [
                p for p in self._params() if p.grad is not None]
            if with_grad:
                torch.nn.utils.clip_grad_norm_(with_grad, self.max_grad_norm)
        self.base.step()

    def _probe(self, closure: Callable[[], Tensor], rng_before: dict, loss: Tensor | None,
               scaler: torch.amp.GradScaler | None = None) -> bool:
        """Rotate N with displaced gradients on this step's batch (rotation_step.py).

        Returns False if the probe saw a non-finite loss or gradient (N unchanged): without a
        scaler the step goes on, warned once; with one it is an overflow for the scaler. A
        displaced loss that disagrees with the gradients (another batch) skips the rotation
        too, warned once, and the step goes on.
        """
        return rotation_step.rotate(self, closure, rng_before, loss, scaler)

    def _correct(self, grads: list[Tensor], direction: list[Tensor],
                 record: bool) -> Tensor | None:
        # |g| costs one more pass over the gradients: measured on probe steps only.
        grad_norm = norm(grads) if record else None
        alpha = policies.effective_alpha(self.alpha_rule, self.alpha, self.curvature)
        projections = [paper_correction_([grads[i] for i in block],
                                         [direction[i] for i in block], alpha)
                       for block in self._blocks(grads)]
        if record:  # norm of g's projection on span of the N blocks, relative to |g|
            self._stats["grad_share"] = norm(projections) / grad_norm
        return projections[0] if self.scope == "global" else None

    # -- N and its layout -------------------------------------------------------------------

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _blocks(self, tensors: list[Tensor]) -> list[list[int]]:
        """Indices of ``tensors`` that share one unit N: all of them, or one block each."""
        if self.scope == "global":
            return [list(range(len(tensors)))]
        # an empty tensor has no direction to turn (and no curvature to report)
        return [[i] for i, t in enumerate(tensors) if t.numel() > 0]

    def _init_direction(self, params: list[Tensor], generator: torch.Generator) -> None:
        """A random unit N, drawn on the CPU from ``generator``: identical on every rank.

        The whole tensor is drawn for every parameter, also for a sharded (DTensor) one, whose
        N is then this rank's shards of that draw, laid out like the parameter: the same N as
        in a single process with the same seed, whatever the sharding.
        """
        draws = [shard_like(torch.randn(p.shape, generator=generator).to(
            p.device, rotation_step.working_dtype(p)), p) for p in params]
        for p, draw in zip(params, draws):  # empty tensors are in no block: N is empty there
            self.state[p][_DIRECTION] = draw.to(self._stored_dtype(p))
        for block in self._blocks(draws):
            unit = dimer.normalize([draws[i] for i in block])
            for i, n in zip(block, unit):
                self.state[params[i]][_DIRECTION] = n.to(self._stored_dtype(params[i]))

    def _stored_dtype(self, p: Tensor) -> torch.dtype:
        return self.direction_dtype or rotation_step.working_dtype(p)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not self.__dict__.get("_constructed"):
            # Inside Optimizer.__init__, which registers the groups one by one: they already
            # live in the base.
            return
        self.base.add_param_group(param_group)
        new = list(self.base.param_groups[-1]["params"])
        try:
            check_params(self.base)
        except (ValueError, TypeError):
            self.base.param_groups.pop()
            raise
        if self.scope == "tensor":
            generator = torch.Generator().manual_seed(
                (self.seed + len(self._params())) % 2**63)
            self._init_direction(new, generator)
        else:  # zero components keep the global N a unit vector; rotation fills them in
            for p in new:
                self.state[p][_DIRECTION] = torch.zeros_like(p, dtype=self._stored_dtype(p))
        # The rule's carried vectors (the Ritz rule's Hessian products) cover the old
        # parameters only: the next probe starts the rule afresh from N.
        rotation_step.reset_rule_state(self)

    # -- checkpoints (checkpoint.py) ---------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict, with DEO's per-parameter state and counters added.

        ``state[i]["deo_direction"]`` holds N for parameter i (``"deo_<key>"`` any other
        per-parameter state of the rotation rule); ``"deo"`` holds the step counter, the probe
        counters, the rule's and the policies' state, the last statistics and the settings.
        """
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        state_dict = checkpoint.deo_state_dict(self)
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state_dict)
            state_dict = state_dict if result is None else result
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a DEO state dict, all of it or nothing (checkpoint.py).

        Raises ``ValueError`` before changing anything if the state dict is not DEO's, lacks
        an entry, holds an N shaped unlike a parameter, or was saved with other settings
        (``alpha``, ``interval``, ``rotation``, ...; the seed is taken from the checkpoint,
        ``compile_step`` stays as constructed). A plain optimizer's state loads into
        ``opt.base.load_state_dict(...)``; ``deo.base_state_dict(sd)`` turns a DEO state dict
        into the base optimizer's.
        """
        state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            state_dict = state_dict if result is None else result
        checkpoint.load_deo_state_dict(self, state_dict)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def settings(self) -> dict[str, Any]:
        """DEO's own settings (the base optimizer's are in ``param_groups``)."""
        return {"alpha": self.alpha, "interval": self.interval, "displacement": self.displacement,
                "rotation_lr": self.rotation_lr, "rotation": self.rotation,
                "probes_per_update": self.probes_per_update,
                "hessian_memory": self.hessian_memory, "ritz_window": self.ritz_window,
                "seed": self.seed,
                "scope": self.scope, "max_grad_norm": self.max_grad_norm,
                "direction_dtype": None if self.direction_dtype is None
                else str(self.direction_dtype).removeprefix("torch."),
                "compile_step": self.compile_step, "alpha_rule": self.alpha_rule,
                "interval_rule": self.interval_rule, "trigger": self.trigger,
                "escape_step": self.escape_step, "escape_trust": self.escape_trust,
                "escape_rule": self.escape_rule}

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"DEO({settings},\n    base={self.base!r})"
