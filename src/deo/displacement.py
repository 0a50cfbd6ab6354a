r"""The dimer's length dR, and the scale-free rule ``displacement="auto"``.

DEO measures the curvature along N by a forward difference of gradients,
HN ~ (g(theta + dR N) - g(theta)) / dR, whose error has two parts:

.. math::
    \| \widehat{HN} - HN \| \;\le\; \tfrac12\, dR\, L_3 \;+\; 2\, \epsilon_g / dR ,

truncation (L_3 bounds the third derivative along N) and round-off (epsilon_g is the absolute
error of one gradient evaluation, about eps |g| in the parameters' precision eps). The paper
ties dR to the learning rate (10 x lr, ``displacement=None``), which has nothing to do with
either term: on a saddle problem with small curvatures it is far too long, and it changes
whenever the learning rate is tuned.

``"auto"`` is the textbook step of forward differences (Nocedal & Wright, Numerical
Optimization, 2nd ed., section 8.1: h = sqrt(eps) times the typical size of the variable),
re-evaluated at every probe step:

.. math::
    dR = \sqrt{\epsilon}\, \max(\|\theta\|, 1),

with eps the largest machine epsilon among the parameters' dtypes. It balances the two
terms when L_3 |theta|^2 ~ |g| (the loss's own scale), follows the parameters' scale as
they grow, and never depends on the learning rate: float64 1.5e-8 x max(|theta|, 1), float32
3.5e-4 x, bfloat16 parameters 8.8e-2 x. Under bf16 autocast with float32 parameters the
gradients carry bf16's round-off (eps 3.9e-3) while the rule sees float32, and it is too
short there: on a 20-64-1 tanh MLP (|theta| = 4.9, Ritz, 30 steps) "auto" (1.7e-3) read
C = -0.34 where the exact curvature along its N was -0.20, while 1e-2 read -0.40 against
-0.37 and 3.5e-2 -0.40 against -0.38 (float32 without autocast: -0.41 against -0.40 for
all three). Under bf16 autocast pass a float, about 10x the float32 value. The floor
max(., 1) is where the rule is not scale-free: for |theta| < 1 it keeps dR above round-off
rather than shrinking it with theta (a start next to a saddle at the origin).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import DEOConfig
from .distributed import norm


def displacement_for(config: DEOConfig, params: list[Tensor]) -> float:
    """dR for a probe step at the parameters as they are (the config's, where it is a
    number; the construction resolved ``None`` to 10 x lr)."""
    if config.displacement != "auto":
        return config.displacement
    eps = max(torch.finfo(p.dtype).eps for p in params)
    size = float(norm([p.detach() for p in params]))
    if not math.isfinite(size):  # a probe at non-finite parameters is skipped anyway
        size = 1.0
    return math.sqrt(eps) * max(size, 1.0)
