r"""The curvature along the base optimizer's update, and a trust region on it.

Adam spikes when the curvature along its update direction passes its stability threshold
(Bai et al. 2025, arXiv 2506.04805; Cohen et al. 2022, arXiv 2207.14484 on the adaptive edge
of stability). ``rotation="update"`` points N along the last update the base optimizer took
before the probe step (``dimer.update_rule``), so the probe measures that curvature,
C = d^T H d with d = u_{t-1} / |u_{t-1}|, for one displaced gradient.

``step_rule="sharpness"`` then checks the probe step's own update u against the quadratic
model along d: with the slope a = g . d of the raw gradient and tau = u . d the step's
length along d,

.. math::
    L(\theta + t d) \approx L + a t + \tfrac12 C t^2, \qquad t^* = -a / C \ (C > 0,\ a < 0).

A step with tau <= 2 t^* lowers the model (the base optimizer's effective lr along d,
eta = tau / -a, satisfies eta C <= 2); a longer one overshoots and raises it: its component
along d is cut to the model's minimum, tau -> t^*, and the rest of the step is kept.
Everything else (C <= 0, a step uphill along d, NaN) is left as it is.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .distributed import dot
from .state import UpdateState


def sharpness_scale(slope: float, curvature: float, length: float) -> float:
    """The factor s on the step's component along d: t^* / tau if tau > 2 t^*, else 1.

    d and -d are the same direction: a step along -d (tau < 0, as when the step oscillates
    across a sharp valley) is judged along -d, with the slope's sign flipped.
    """
    if length < 0:
        slope, length = -slope, -length
    if not (curvature > 0 and slope < 0 and length > 0) or not math.isfinite(length):
        return 1.0
    minimum = -slope / curvature
    return minimum / length if length > 2.0 * minimum else 1.0


def after_step_(params: list[Tensor], before: list[Tensor], direction: list[Tensor],
                slope: float | None, curvature: float, check: bool) -> tuple[UpdateState, float]:
    """The step just taken is u = params - before (computed into ``before``). With ``check``
    (a probe step of ``step_rule="sharpness"``) its component along ``direction`` is cut by
    ``sharpness_scale``. Returns the rule's new state (the update taken: the next probe's
    direction) and the factor used."""
    with torch.no_grad():
        torch._foreach_sub_(before, params)
        torch._foreach_neg_(before)  # u, in the buffer that held theta
        scale = 1.0
        if check and slope is not None:
            length = float(dot(before, direction))
            scale = sharpness_scale(slope, curvature, length)
            if scale < 1.0:
                cut = -(1.0 - scale) * length
                torch._foreach_add_(params, list(direction), alpha=cut)
                torch._foreach_add_(before, list(direction), alpha=cut)
    return UpdateState(update=before), scale
