r"""The checked negative-curvature step (``escape_rule="checked"``): a trial step along N that
is kept only if the loss, as the gradients at both ends of the step measure it, fell; and
the line search built on it (``escape_rule="search"``).

The plain rule (``"fixed"``, ``escape_along_negative_curvature_``) trusts the
quadratic model that the probe measured over dR and moves ``s |C|`` along N: on strict
saddles that is the right step; on a language model, where C is large and negative over dR
but the loss is far from quadratic over s |C|, it is a jump of several units that wrecks the
run (docs/open-questions.md). The checked rule is the classic trust-region remedy. On a probe
step with C < 0, before the base step:

.. math::
    d &= -\mathrm{sign}(g \cdot N)\,N, \qquad t = \min(s\,|C|,\ k\,dR,\ r)
        \quad (k = \texttt{escape\_trust}, \text{ if set};\ r: \text{the trust radius})\\
    g' &= \nabla L(\theta + t\,d) \ \text{(same batch, same dropout masks)}, \qquad
    C_t = d \cdot (g' - g) / t\\
    m &= t\,(g \cdot d) + \tfrac12 C\,t^2 \ (< 0), \qquad
    \Delta = t\,(g \cdot d) + \tfrac12 C_t\,t^2, \qquad \rho = \Delta / m .

Delta is the trapezoid rule for the change in loss along the step (exact on a quadratic),
m the change the probe's curvature predicted. rho >= ``ACCEPT``: the parameters stay at
theta + t d and the base step starts there from g'; otherwise they return to theta and g.
The radius r starts unbounded; a step with rho >= ``EXPAND`` sets r = max(r, 2 t), a
rejected one r = ``SHRINK`` t. A step shorter than dR (the distance over which C was
measured) is not tried and r doubles instead, so a model that keeps rejecting pays for a
trial only every few probes. Each trial is one more gradient evaluation, counted in
``stats["extra_gradients"]``; ``stats["escapes"]`` and ``stats["escape_trials"]`` count the
kept and the tried steps (for the search below: the kept and tried segments).

The line search (``"search"``) sizes the step from the problem instead of from dR or from
s |C| (a curvature, not a length). Its first segment is the length at which the probe's
quadratic model along d balances its linear term, from where the parameters are now:

.. math::
    t_0 = s\,|g \cdot N| / |C| \quad (s\,dR \text{ where } g \cdot N = 0),

which near a strict saddle is about the current offset from the saddle along N (there
g.N ~ C x offset), whatever the scale of the problem and whatever dR.
Each segment of length t_k from the current point p is judged like the checked step, with
the slope a = g_p . d there and its own secant C_k; a kept segment moves the parameters,
and while its rho >= ``EXPAND`` and the slope at the new point still descends, the next one
is ``SEARCH_GROWTH`` (8) times longer, up to ``SEARCH_TRIALS`` segments per probe step (and a
total of k dR with ``escape_trust``). A rejected segment ends the search where the last kept
one left the parameters. So the distance covered grows geometrically: t_0 (8^k - 1) / 7 after k
kept segments (8 was chosen over 4 and 16 on the saddle suite's selection split,
benchmarks/results/saddle-suite-cpu/): out of a saddle that gradient descent leaves by a
factor (1 + lr |C|) per step in a handful of gradient evaluations. It carries no state
between probe steps.

The functions here are pure: they take the trust radius (``EscapeState``) and return the new
one; probe_step.py runs the trial's evaluation and moves the parameters.

The test reads gradients, not losses: under DDP every rank sees the same all-reduced
gradients and so takes the same decision, and a closure may return a scaled loss or none.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import DEOConfig
from .corrections import add_scaled_
from .state import EscapeState

ACCEPT = 0.1  # rho below this: the step is undone
EXPAND = 0.75  # rho above this: the model held, the radius may grow to twice the step
SHRINK = 0.25  # a rejected step's length times this is the new radius


def step_length(scale: float, curvature: float, longest: float | None, radius: float) -> float:
    """t = min(s |C|, longest, r); 0 where C >= 0 or C is NaN."""
    if not curvature < 0:
        return 0.0
    return min(scale * -curvature, math.inf if longest is None else longest, radius)


def trust_ratio(slope: float, curvature: float, secant: float, length: float) -> float:
    """rho = (t slope + C_t t^2 / 2) / (t slope + C t^2 / 2), slope = g . d <= 0, C < 0."""
    predicted = length * slope + 0.5 * curvature * length ** 2
    measured = length * slope + 0.5 * secant * length ** 2
    return measured / predicted


def next_radius(radius: float, length: float, ratio: float) -> float:
    if ratio < ACCEPT:
        return SHRINK * length
    if ratio >= EXPAND:
        return max(radius, 2.0 * length)
    return radius


SEARCH_GROWTH = 8.0  # each kept segment of the line search is followed by one this much longer
SEARCH_TRIALS = 8  # segments (gradient evaluations) per probe step at most


def first_search_length(scale: float, curvature: float, slope: float, displacement: float,
                        longest: float | None) -> float:
    """t_0 = s |g . N| / |C| (s dR where g . N = 0), capped at ``longest``; 0 where C >= 0
    or C is NaN."""
    if not curvature < 0:
        return 0.0
    length = scale * (abs(slope) / -curvature or displacement)
    return length if longest is None else min(length, longest)


def next_search_length(length: float, ratio: float, slope: float, trials: int,
                       travelled: float, longest: float | None) -> float | None:
    """The next segment after a kept one of ``length`` (trust ratio ``ratio``, ``slope`` =
    g . d at the new point, ``trials`` segments tried, ``travelled`` the distance covered),
    or None: the search stops when the model held less well than ``EXPAND``, the loss no
    longer descends along d, the trials are spent or the cap is reached."""
    if ratio < EXPAND or not slope < 0 or trials >= SEARCH_TRIALS:
        return None
    following = SEARCH_GROWTH * length
    if longest is not None:
        following = min(following, longest - travelled)
    return following if following > 0 else None


def longest_step(config: DEOConfig, displacement: float) -> float | None:
    """``escape_trust`` displacements (k dR), the cap of either rule; None without one."""
    return None if config.escape_trust is None else config.escape_trust * displacement


def plan_trial(state: EscapeState, config: DEOConfig, curvature: float,
               displacement: float) -> tuple[float | None, EscapeState]:
    """The length t of this probe step's trial (None: no trial) and the new state.

    A step shorter than dR is not worth a gradient evaluation: no trial, and the radius
    doubles instead.
    """
    length = step_length(config.escape_step, curvature, longest_step(config, displacement),
                         state.radius)
    if length == 0.0:
        return None, state
    if length < displacement:
        return None, EscapeState(radius=state.radius * 2.0)
    return length, state


def judge_trial(state: EscapeState, length: float, slope: float, curvature: float,
                secant: float | None) -> tuple[bool, EscapeState]:
    """(keep the trial, the new state) from the slope g . d <= 0, the probe's curvature C
    and the trial's secant curvature C_t (None: the trial's gradient was not finite)."""
    ratio = -math.inf if secant is None else trust_ratio(slope, curvature, secant, length)
    return not ratio < ACCEPT, EscapeState(radius=next_radius(state.radius, length, ratio))


def escape_along_negative_curvature_(params: list[Tensor], direction: list[Tensor],
                                     projection: Tensor, curvature: Tensor,
                                     scale: float, longest: float | None = None) -> None:
    r"""The negative-curvature step: theta <- theta - sign(g . N) t N, in place, with
    t = min(s max(-C, 0), ``longest``).

    Where the curvature C along N is negative, the loss falls along both N and -N to second
    order; the sign is chosen to descend to first order too (+N when g . N = 0). The step
    length grows with |C|, as in the negative-curvature steps of saddle-escape methods (for
    f = 1/2 C t^2 + rho/6 |t|^3 the best step is 2 |C| / rho; s stands for 2 / rho), up to
    ``longest`` if given (a trust region: the curvature was measured over a finite distance).
    Nothing moves where C >= 0 or C is NaN. No host sync.
    """
    length = scale * torch.clamp(-curvature, min=0.0).nan_to_num(0.0)
    if longest is not None:
        length = length.clamp(max=longest)
    coefficient = torch.where(projection > 0, -length, length)
    add_scaled_(params, direction, coefficient.to(projection.dtype))
