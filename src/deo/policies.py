r"""Policies beyond the paper: how strongly to correct, when to probe, and when to act at all.

The paper fixes all three: alpha is a constant, a probe comes every ``interval`` steps, and
every step is corrected. Each alternative here is one small function or one small class,
chosen in ``DEO`` by one argument (``alpha_rule``, ``interval_rule``, ``trigger``); the
negative-curvature step (``escape_step``) is in corrections.py. The math:

alpha_rule
    ``"fixed"``       alpha_t = alpha (paper).
    ``"curvature"``   alpha_t = alpha if C < 0 else 0: correct only while the measured
                      curvature along N is negative; where the loss is convex along N (or
                      before the first probe, C = NaN) the base optimizer runs untouched.
                      Computed on the device (no host sync in the cheap step).

interval_rule
    ``"fixed"``       probe at steps 0, f, 2f, ... (paper).
    ``"angle"``       the gap to the next probe adapts to how fast N moves: it starts at 1
                      (frequent early), doubles while N turned by less than ``ANGLE_STILL``
                      at the last probe and halves when it turned by more than
                      ``ANGLE_MOVING``, within [1, ``4 f``]. Reads the angle on the host once
                      per probe step (probe steps sync anyway).

trigger (hybrid DEO)
    ``"always"``      every step is a DEO step (paper).
    ``"spike"``       the base optimizer alone, bit for bit, until the loss jumps:
                      L_t > ``SPIKE_FACTOR`` x EMA(L) (EMA over earlier steps, weight
                      ``SPIKE_EMA``, armed after ``SPIKE_WARMUP`` steps). Then DEO probes on
                      that step and corrects for the next f steps (a further jump extends the
                      window). Reads the loss on the host every step (one sync per step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

ALPHA_RULES = ("fixed", "curvature")
INTERVAL_RULES = ("fixed", "angle")
TRIGGERS = ("always", "spike")

ANGLE_STILL = 0.05  # radians: N barely moved, probe less often
ANGLE_MOVING = 0.5  # radians: N is still turning, probe more often
SPIKE_FACTOR = 1.2
SPIKE_EMA = 0.9
SPIKE_WARMUP = 10


def effective_alpha(rule: str, alpha: float, curvature: Tensor) -> float | Tensor:
    """alpha_t for this step (see the module doc); a tensor where it depends on C."""
    if rule == "fixed":
        return alpha
    return torch.where(curvature < 0, alpha, 0.0).to(curvature.dtype)


def next_probe_gap(gap: int, angle: float, interval: int) -> int:
    """The ``"angle"`` rule: steps until the next probe, from the last gap and angle."""
    if not math.isfinite(angle):  # no rotation measured (skipped probe): keep the pace
        return gap
    if angle < ANGLE_STILL:
        gap *= 2
    elif angle > ANGLE_MOVING:
        gap //= 2
    return max(1, min(gap, 4 * interval))


@dataclass
class SpikeTrigger:
    """The ``"spike"`` trigger's state: a loss EMA and the end of the active window."""

    ema: float = math.nan
    seen: int = 0
    active_until: int = -1  # steps < active_until are DEO steps

    def observe(self, step: int, loss: float, window: int) -> bool:
        """Update with this step's loss; True if this step starts or extends a DEO window."""
        jump = (self.seen >= SPIKE_WARMUP and math.isfinite(loss)
                and loss > SPIKE_FACTOR * self.ema)
        if math.isfinite(loss):
            self.ema = loss if self.seen == 0 else SPIKE_EMA * self.ema + (1 - SPIKE_EMA) * loss
            self.seen += 1
        if jump:
            self.active_until = step + window
        return jump

    def active(self, step: int) -> bool:
        return step < self.active_until
