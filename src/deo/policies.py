r"""Policies beyond the paper: how strongly to correct, when to probe, and when to act at all.

The paper fixes all three: alpha is a constant, a probe comes every ``interval`` steps, and
every step is corrected. Each alternative here is one small function or one small class,
chosen in ``DEO`` by one argument (``alpha_rule``, ``interval_rule``, ``trigger``); the
negative-curvature step (``escape_step``, both rules) is in escape.py. Each takes
its state explicitly and returns the new state. The math:

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
from typing import Any

import torch
from torch import Tensor

from .arguments import loss_value
from .config import DEOConfig
from .state import Schedule, SpikeTrigger

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


def observe_loss(trigger: SpikeTrigger, step: int, loss: float,
                 window: int) -> tuple[SpikeTrigger, bool]:
    """The trigger after this step's loss, and whether this step starts or extends a window."""
    jump = (trigger.seen >= SPIKE_WARMUP and math.isfinite(loss)
            and loss > SPIKE_FACTOR * trigger.ema)
    ema, seen, until = trigger.ema, trigger.seen, trigger.active_until
    if math.isfinite(loss):
        ema = loss if seen == 0 else SPIKE_EMA * ema + (1 - SPIKE_EMA) * loss
        seen += 1
    if jump:
        until = step + window
    return SpikeTrigger(ema, seen, until), jump


def active(trigger: SpikeTrigger, step: int) -> bool:
    """Whether ``step`` lies in a DEO window of the ``"spike"`` trigger."""
    return step < trigger.active_until


def probe_due(config: DEOConfig, steps: int, schedule: Schedule) -> bool:
    """Whether step ``steps`` may evaluate displaced gradients (see ``DEO.probe_due``)."""
    if config.trigger != "always":  # the trigger decides, after the loss is known
        return True
    if config.interval_rule == "fixed":
        return steps % config.interval == 0
    return steps >= schedule.next_probe


def plan(config: DEOConfig, steps: int, schedule: Schedule, spikes: SpikeTrigger,
         loss: Any) -> tuple[bool, bool, SpikeTrigger]:
    """(this step probes, its gradient is corrected, the trigger's new state); the
    ``"spike"`` trigger reads the loss on the host (one sync)."""
    if config.trigger == "always":
        return probe_due(config, steps, schedule), True, spikes
    value = loss_value(loss, f"trigger={config.trigger!r}")
    spikes, jump = observe_loss(spikes, steps, value, config.interval)
    return jump, active(spikes, steps), spikes


def why_due(config: DEOConfig, steps: int) -> str:
    """Why step ``steps`` is a probe step, for error messages."""
    if config.trigger != "always":
        return f"step {steps}; trigger={config.trigger!r} reads the loss on every step"
    if config.interval_rule == "fixed":
        return f"step {steps} with interval={config.interval}"
    return f"step {steps}, a probe step of interval_rule={config.interval_rule!r}"


def after_probe(config: DEOConfig, steps: int, schedule: Schedule, angle: float,
                completed: bool) -> Schedule:
    """The schedule after the probe step ``steps`` (``interval_rule="angle"`` only moves).

    ``completed``: whether the rule's cycle ended (a Ritz cycle spread over probe steps only
    turns N when it completes): the gap adapts to the angles of completed rotations.
    """
    if config.interval_rule != "angle":
        return schedule
    gap = next_probe_gap(schedule.probe_gap, angle, config.interval) if completed \
        else schedule.probe_gap
    return Schedule(next_probe=steps + gap, probe_gap=gap)
