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
3.5e-4 x, bfloat16 parameters 8.8e-2 x. Under autocast the gradients carry the autocast
dtype's round-off (bf16: eps 7.8e-3) whatever the parameters' dtype, so eps is the larger of
the two: DEO watches the main pass of each probe step for autocast (``AutocastWatch``, a
global forward pre-hook, since the closure enters autocast itself). Measured on a 20-64-1
tanh MLP (|theta| = 4.9, Ritz, 30 steps, bf16 autocast on the CPU; tests/test_displacement.py):
with the parameters' float32 epsilon alone dR = 1.7e-3 reads C = -0.53 where the exact
curvature along the N it found is -0.23 (an error of 126%); with bf16's, dR = 0.43 reads
-0.44 against -0.37 (17%). Without autocast the float32 length reads -0.41 against -0.40.
Compiled models: ``torch.compile(model)`` calls the hook on its wrapper, so autocast is seen
and nothing recompiles (torch warns once that global hooks fire an extra time); in-place
``model.compile()`` traces the hook dispatch into the graph, which then recompiles whenever
the hook comes and goes, up to dynamo's cache limit: pass a float there. The floor
max(., 1) is where the rule is not scale-free: for |theta| < 1 it keeps dR above round-off
rather than shrinking it with theta (a start next to a saddle at the origin).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import DEOConfig
from .distributed import norm

AUTOCAST_DEVICES = ("cuda", "cpu", "xpu", "mps")


class AutocastWatch:
    """Whether the forward passes between construction and ``stop()`` ran under
    ``torch.autocast``, and in which dtype: a closure enters autocast itself, out of DEO's
    sight, so a global forward pre-hook looks while the main pass runs. A model compiled in
    place (``model.compile()``) recompiles as the hook comes and goes: pass a float there."""

    def __init__(self) -> None:
        self.seen: torch.dtype | None = None
        self._handle = torch.nn.modules.module.register_module_forward_pre_hook(self._look)

    def _look(self, module: torch.nn.Module, args: tuple) -> None:
        for device in AUTOCAST_DEVICES:
            try:
                if not torch.is_autocast_enabled(device):
                    continue
                dtype = torch.get_autocast_dtype(device)
            except (RuntimeError, ValueError, TypeError):  # a device type this build lacks
                continue
            if self.seen is None or torch.finfo(dtype).eps > torch.finfo(self.seen).eps:
                self.seen = dtype

    def stop(self) -> torch.dtype | None:
        """Remove the hook (idempotent) and return the widest-epsilon dtype seen."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        return self.seen


def displacement_for(config: DEOConfig, params: list[Tensor],
                     compute_dtype: torch.dtype | None = None) -> float:
    """dR for a probe step at the parameters as they are (the config's, where it is a
    number; the construction resolved ``None`` to 10 x lr). ``compute_dtype``: the autocast
    dtype the main pass ran in, if any (``AutocastWatch``), whose epsilon then counts too."""
    if config.displacement != "auto":
        return config.displacement
    eps = max(torch.finfo(p.dtype).eps for p in params)
    if compute_dtype is not None:
        eps = max(eps, torch.finfo(compute_dtype).eps)
    size = float(norm([p.detach() for p in params]))
    if not math.isfinite(size):  # a probe at non-finite parameters is skipped anyway
        size = 1.0
    return math.sqrt(eps) * max(size, 1.0)
