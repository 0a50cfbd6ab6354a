r"""The oracle control: DEO whose N is the exact minimum-curvature eigenvector (small models).

``OracleDEO`` replaces DEO's finite-difference rotation by ground truth: its rotation rule is
``LanczosRule``. On every probe step
(steps 0, interval, 2 interval, ...) it computes, on the current batch,

.. math::
    H = \nabla^2 L_{batch}(\theta), \qquad (\lambda_{\min}, v_{\min}) = \text{Lanczos}(H),
    \qquad N \leftarrow \mathrm{sign}(N_{old} \cdot v_{\min})\, v_{\min}

with exact Hessian-vector products (double backward, :mod:`deo.hessian`), warm-started from
the current N, and the correction :math:`\tilde g = g - \alpha (g \cdot N) N` is DEO's,
unchanged. It bounds what a perfect estimator of N could give and separates "the estimator is
wrong" from "the correction does not help". Lanczos costs tens to hundreds of double backward
passes per probe: small models only; one process, ``scope="global"``.

The Hessian needs the loss WITHOUT ``backward()`` (``deo.hessian``'s convention), so
``step`` takes it next to the closure: ``opt.step(closure, loss_fn=loss_fn)`` with
``loss_fn`` the zero-argument callable that returns this step's batch loss (the closure is
``zero_grad(); loss = loss_fn(); loss.backward(); return loss``). It is used for this step
only. Randomness: ``loss_fn`` is evaluated with the RNG state replayed from before the main
pass (the same dropout masks, so H is the Hessian of the function whose gradient is in
``.grad``) and the RNG is then put back; module buffers (BatchNorm statistics) written by
that forward pass are restored. Parameters and ``.grad`` are never written.

Statistics: ``curvature`` = :math:`\lambda_{\min}`; ``angle`` = arccos |N_old . N_new|;
``extra_gradients`` grows by the gradient-equivalent passes of each probe: one gradient with
its graph (``create_graph``) plus one double backward per Hessian-vector product.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..dimer import Evaluations, Rotation, RuleSettings
from ..displaced import (
    NonFiniteProbe,
    capture_rng_state,
    frozen_module_buffers,
    restore_rng_state,
)
from ..distributed import dot
from ..hessian import extreme_eigenpairs
from ..optimizer import DEO
from ..state import OjaState

LossFn = Callable[[], Tensor]

_MISSING_LOSS_FN = (
    "OracleDEO.step() needs loss_fn= on probe steps (this is step {step}, interval={interval}): "
    "the exact Hessian is taken of loss_fn(), a zero-argument callable that returns this "
    "step's batch loss without calling backward(). Call opt.step(closure, loss_fn=loss_fn).")


class LanczosRule:
    """The oracle's rotation rule: N := +-v_min of the exact Hessian of this step's batch.

    A rule like dimer.py's, except that it asks for no displaced gradient: its Hessian-vector
    products are exact (double backward of ``loss_fn``), and it reports their cost in
    ``Rotation.extra_gradients``. ``prepare`` hands it this step's batch loss and the RNG
    state of the main pass.
    """

    def __init__(self, tol: float, maxiter: int | None) -> None:
        self.tol, self.maxiter, self.seed = tol, maxiter, 0
        self.loss_fn: LossFn | None = None
        self.rng_before: dict | None = None
        self.params: list[Tensor] = []

    def prepare(self, loss_fn: LossFn | None, rng_before: dict | None,
                params: list[Tensor], seed: int = 0) -> None:
        self.loss_fn, self.rng_before, self.params, self.seed = loss_fn, rng_before, params, seed

    def __call__(self, direction: list[Tensor], state: OjaState,
                 settings: RuleSettings) -> Evaluations:
        yield from ()  # no displaced gradient: the products are exact
        if self.loss_fn is None:
            raise ValueError("LanczosRule: prepare(loss_fn, ...) was not called for this step")
        old = [n.clone() for n in direction]
        eig = self._exact_min_eigenpair(start=old)
        new = [v.to(n.dtype) for v, n in zip(eig.v_min, old)]
        if dot(old, new) < 0:  # N and -N are the same direction; keep the orientation DEO had
            new = [-v for v in new]
        curvature = torch.tensor(eig.lambda_min, dtype=old[0].dtype, device=old[0].device)
        return Rotation(new, curvature, state, extra_gradients=1 + eig.matvecs)

    def _exact_min_eigenpair(self, start: list[Tensor]):
        """Lanczos on the batch Hessian, the loss evaluated as the main pass saw it."""
        loss_fn, rng_before, rng_after = self.loss_fn, self.rng_before, capture_rng_state()

        def replayed_loss() -> Tensor:
            restore_rng_state(rng_before)  # the main pass's dropout masks
            loss = loss_fn()
            if not torch.isfinite(loss).all():
                raise NonFiniteProbe("the batch loss is not finite")
            return loss

        failed = "Lanczos did not converge or saw a non-finite loss"
        try:
            with torch.enable_grad(), frozen_module_buffers():
                eig = extreme_eigenpairs(replayed_loss, self.params, tol=self.tol,
                                         maxiter=self.maxiter, seed=self.seed, start=start)
        except (NonFiniteProbe, *_lanczos_failures()) as error:
            raise NonFiniteProbe(failed) from error  # the products it used are not known
        finally:
            restore_rng_state(rng_after)
        if not (math.isfinite(eig.lambda_min) and all(bool(v.isfinite().all())
                                                      for v in eig.v_min)):
            failure = NonFiniteProbe(failed)
            failure.extra_gradients = 1 + eig.matvecs  # its products were made: counted
            raise failure
        return eig


class OracleDEO(DEO):
    """DEO with N := v_min of the exact batch Hessian every ``interval`` steps (see module doc).

    Args (besides DEO's; ``rotation``, ``rotation_lr``, ``probes_per_update``,
    ``hessian_memory`` and ``ritz_window`` are accepted and unused):
        lanczos_tol: relative accuracy of the Lanczos eigenpairs (ARPACK ``eigsh`` tol).
        lanczos_maxiter: ARPACK's iteration limit (None: its default).

    A probe whose loss or eigenpair is not finite, or whose Lanczos does not converge, keeps
    N as it was (counted in ``stats["skipped_probes"]``, warned once; the products such a
    failed Lanczos used are not known and not counted).
    """

    def __init__(self, params, base=torch.optim.AdamW, *, lanczos_tol: float = 1e-6,
                 lanczos_maxiter: int | None = None, **kwargs: Any) -> None:
        if kwargs.get("scope", "global") != "global":
            raise ValueError("scope: OracleDEO computes one global N; use scope='global'")
        if not lanczos_tol > 0:
            raise ValueError(f"lanczos_tol: expected a float > 0, got {lanczos_tol!r}")
        kwargs.pop("rotation", None)  # the rule is Lanczos whatever is asked
        super().__init__(params, base, **kwargs)
        self.rule = LanczosRule(float(lanczos_tol), lanczos_maxiter)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, *, loss_fn: LossFn | None = None,
             grad_scaler: torch.amp.GradScaler | None = None) -> Tensor | None:
        """DEO's step; ``loss_fn`` (required on probe steps) returns this batch's loss."""
        if self.probe_due() and loss_fn is None:
            raise ValueError(_MISSING_LOSS_FN.format(step=self.steps, interval=self.interval))
        self.rule.prepare(loss_fn, capture_rng_state(), self._params(), self.config.seed)
        try:
            return super().step(closure, grad_scaler=grad_scaler)
        finally:
            self.rule.prepare(None, None, [])  # never reuse another step's batch

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "rotation": "oracle", "lanczos_tol": self.rule.tol,
                "lanczos_maxiter": self.rule.maxiter}


def _lanczos_failures() -> tuple[type[BaseException], ...]:
    """ARPACK's errors (no convergence, NaN input); empty when SciPy is missing."""
    try:
        from scipy.sparse.linalg import ArpackError
    except ImportError:
        return ()
    return (ArpackError,)
