r"""Stability metrics the field uses, so that claims about loss spikes are measured one way.

``olmo_spike_score`` (OLMo 2, arXiv 2501.00656)
    The share of steps whose value is at least ``sigmas`` (7) standard deviations above the
    mean of the ``window`` (1000) values before it, on the training loss or the gradient
    norm:

    .. math::
        s = \frac{1}{|I|} \sum_{t \in I} [\, x_t \ge \mu_t + 7 \sigma_t \,], \qquad
        \mu_t, \sigma_t \text{ over } x_{t-w}, \dots, x_{t-1} .

    I holds the steps with at least ``min_history`` values before them (runs shorter than
    the window are scored on what they have). A non-finite value ends the scored part: a
    diverged run is counted among the divergences, not as a spike.

``count_spikes`` (task.py)
    The bench's rule: a loss >= 2x the mean of the previous 100.

``spike_events``
    The 2x rule is scale-free, so once a loss sits at round-off level (the slingshot's
    ~1e-9) its jitter counts as hundreds of "spikes" a plot does not show. An event keeps
    the 2x-rule steps whose loss reaches ``floor`` (1%) of the run's first loss and groups
    them into episodes (a new one starts after ``gap`` or more steps without one): what a
    user would call a spike, counted once however many steps it lasts.

``curvature_flags`` and ``early_warning``
    An early-warning read-out from DEO's probes: a flag wherever the probe's curvature C
    exceeds ``factor`` times the mean |C| of the ``window`` probes before it; then, against
    the spikes a run really had, the precision (flags followed by a spike ``lead`` to
    ``horizon`` steps later), the recall (spikes preceded by such a flag) and the lead time.

``lr_sensitivity`` (Wortsman et al. 2023, arXiv 2309.14322)
    Over a log grid of learning rates, the mean of min(final(eta), initial) minus the best
    final loss of the grid: 0 when every learning rate ends at the best loss, up to
    initial - best when only one trains. A diverged run counts as the initial loss.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence

import torch

OLMO_WINDOW = 1000
OLMO_SIGMAS = 7.0
MIN_HISTORY = 100  # values before a step is scored: a spread needs some history


def spike_steps(values: Sequence[float], window: int = OLMO_WINDOW,
                sigmas: float = OLMO_SIGMAS, min_history: int = MIN_HISTORY) -> list[int]:
    """The steps ``olmo_spike_score`` counts as spikes (indices into ``values``).

    Each window's mean and spread are computed afresh (two passes, float64): running sums,
    updated as values enter and leave, keep the round-off of a loss of ~100 long after it has
    left, which swamps the spread of a window at ~1e-9 (the slingshot's)."""
    _check_window(window, min_history)
    finite = finite_length(values)
    x = torch.tensor(values[:finite], dtype=torch.float64)
    spikes: list[int] = []
    # the first windows grow to full size (x[:t]): rows of x[:t_max], masked past each t
    growing = torch.arange(min_history, max(min_history, min(window, finite)))
    if len(growing):
        head = x[:int(growing[-1])]
        mask = torch.arange(len(head)) < growing[:, None]
        mean = (head * mask).sum(dim=1) / growing
        spread = (((head - mean[:, None]) * mask).square().sum(dim=1) / growing).sqrt()
        hit = _is_spike(x[growing], mean, spread, sigmas)
        spikes += growing[hit].tolist()
    windows = x.unfold(0, window, 1) if finite > window else x.new_empty(0, window)
    for first in range(max(min_history, window), finite, _CHUNK):  # full windows, by chunks
        last = min(first + _CHUNK, finite)
        mean, spread = _mean_and_spread(windows[first - window:last - window])
        hit = _is_spike(x[first:last], mean, spread, sigmas)
        spikes += (hit.nonzero().flatten() + first).tolist()
    return spikes


_CHUNK = 4096  # windows scored at once: bounds the temporary to _CHUNK x window floats


def _mean_and_spread(windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = windows.mean(dim=1)
    return mean, (windows - mean[:, None]).square().mean(dim=1).sqrt()  # population sigma


def _is_spike(value: torch.Tensor, mean: torch.Tensor, spread: torch.Tensor,
              sigmas: float) -> torch.Tensor:
    # strictly above the mean: a window with zero spread does not flag its own mean
    return (value > mean) & (value >= mean + sigmas * spread)


def olmo_spike_score(values: Sequence[float], window: int = OLMO_WINDOW,
                     sigmas: float = OLMO_SIGMAS, min_history: int = MIN_HISTORY) -> float:
    """The share of scored steps that are spikes (see the module doc); NaN if none is scored."""
    return spike_share(spike_steps(values, window, sigmas, min_history), values, min_history)


def spike_share(spikes: Sequence[int], values: Sequence[float],
                min_history: int = MIN_HISTORY) -> float:
    """``olmo_spike_score`` from its ``spike_steps`` (for a caller that keeps both)."""
    scored = finite_length(values) - min_history
    return len(spikes) / scored if scored > 0 else math.nan


def finite_length(values: Sequence[float]) -> int:
    """How many values come before the first non-finite one: the part a spike rule scores."""
    return next((t for t, v in enumerate(values) if not math.isfinite(v)), len(values))


EVENT_GAP = 100  # steps without a 2x-rule spike that end an episode
EVENT_FLOOR = 0.01  # an episode is an event if its loss reaches this share of the first loss


def spike_events(spikes: Sequence[int], train_loss: Sequence[Sequence[float]],
                 gap: int = EVENT_GAP, floor: float = EVENT_FLOOR) -> list[int]:
    """The first step of each spike event (see the module doc). ``spikes``: the 2x-rule
    steps; ``train_loss``: [[step, loss], ...] as recorded (every k-th step on long runs: a
    spike step counts if a loss recorded within k steps of it reaches the floor)."""
    if not (isinstance(gap, int) and gap >= 1):
        raise ValueError(f"gap: expected an integer >= 1, got {gap!r}")
    if not floor > 0:
        raise ValueError(f"floor: expected a number > 0, got {floor!r}")
    if not spikes or not train_loss:
        return []
    steps = [step for step, _ in train_loss]
    stride = steps[1] - steps[0] if len(steps) > 1 else 1
    first = train_loss[0][1]
    if not (math.isfinite(first) and first > 0):  # the floor is a share of a positive loss
        raise ValueError(f"train_loss: spike events need a finite, positive first loss, "
                         f"got {first!r}")
    threshold = floor * first

    def high(spike: int) -> bool:  # a recorded loss near it reaches the floor (or diverged)
        i = bisect.bisect_left(steps, spike - stride)
        j = bisect.bisect_right(steps, spike + stride)
        return any(not math.isfinite(loss) or loss >= threshold for _, loss in train_loss[i:j])

    events: list[int] = []
    last = None
    for spike in sorted(spikes):
        if not high(spike):
            continue
        if last is None or spike - last > gap:
            events.append(spike)
        last = spike
    return events


def curvature_flags(curvature: Sequence[Sequence[float]], factor: float = 2.0,
                    window: int = 10) -> list[int]:
    """Steps whose curvature exceeds ``factor`` x the mean |C| of the ``window`` probes before
    (``curvature``: [[step, C], ...] as bench records hold it)."""
    _check_window(window, 2)
    flags = []
    for i in range(window, len(curvature)):
        recent = [abs(c) for _, c in curvature[i - window:i]]
        step, value = curvature[i]
        if math.isfinite(value) and value > factor * sum(recent) / window > 0:
            flags.append(int(step))
    return flags


def early_warning(flags: Sequence[int], spikes: Sequence[int], lead: int = 20,
                  horizon: int = 200) -> dict[str, float]:
    """Precision and recall of ``flags`` against ``spikes`` (steps), and the median lead.

    A flag at f is a true alarm if a spike s follows with lead <= s - f <= horizon; a spike
    is caught if such a flag precedes it, and its lead is s minus its earliest such flag.
    Precision is NaN without flags, recall NaN without spikes.
    """
    if not 0 <= lead <= horizon:
        raise ValueError(f"lead, horizon: expected 0 <= lead <= horizon, got {lead}, {horizon}")
    true_alarms = [f for f in flags if any(lead <= s - f <= horizon for s in spikes)]
    leads = [s - min(f for f in flags if lead <= s - f <= horizon) for s in spikes
             if any(lead <= s - f <= horizon for f in flags)]
    return {"precision": len(true_alarms) / len(flags) if flags else math.nan,
            "recall": len(leads) / len(spikes) if spikes else math.nan,
            "lead": sorted(leads)[len(leads) // 2] if leads else math.nan,
            "flags": len(flags), "spikes": len(spikes)}


def lr_sensitivity(final_losses: Mapping[float, float], initial_loss: float) -> float:
    """Wortsman et al.'s LR sensitivity of one optimizer over a grid {lr: final loss}.

    The best loss is taken after the cap, so an optimizer that trains at no lr of the grid
    scores 0 (the uncapped best would make it negative): read the losses beside it."""
    if not final_losses:
        raise ValueError("final_losses: expected at least one learning rate, got none")
    if not math.isfinite(initial_loss):
        raise ValueError(f"initial_loss: expected a finite number, got {initial_loss!r}")
    capped = [min(loss, initial_loss) if math.isfinite(loss) else initial_loss
              for loss in final_losses.values()]
    return sum(capped) / len(capped) - min(capped)


def _check_window(window: int, min_history: int) -> None:
    if not (isinstance(window, int) and window >= 2):
        raise ValueError(f"window: expected an integer >= 2, got {window!r}")
    if not (isinstance(min_history, int) and 2 <= min_history <= window):
        raise ValueError(f"min_history: expected an integer in [2, window={window}], "
                         f"got {min_history!r}")
