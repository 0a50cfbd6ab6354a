"""DEO's state, explicit and typed: what a step reads and writes, and a checkpoint holds.

``DEOState`` gathers everything DEO carries from step to step; each rule's carried state is
a dataclass of its own (``RitzState``; the Oja rule carries nothing but N). Fields come in
three kinds, and ``flatten``/``unflatten`` treat each kind the same way wherever it occurs,
which is how a checkpoint saves every piece of state through one path (checkpoint.py):

* per-parameter tensors (``list[Tensor]``, one entry per parameter, ``None`` when unset);
* 0-d tensors (the last statistics), kept on the device so the cheap step never syncs;
* plain numbers (counters, the schedule, the trigger's and the escape rule's state).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

PerParameter = list[Tensor]


@dataclass
class OjaState:
    """The Oja rule carries nothing between probe steps but N itself."""

    cycle_complete = True  # every probe step turns N


@dataclass
class RitzState:
    """The Ritz rule's carried Hessian products and its place in the rotation cycle."""

    hvp: PerParameter | None = None  # H N, blended over batches
    previous: PerParameter | None = None  # P, the last change of N
    hvp_previous: PerParameter | None = None  # H P
    expansion: PerParameter | None = None  # W, sampled over ritz_window batches
    hvp_expansion: PerParameter | None = None  # the running mean of H W
    samples: int = 0
    phase: int = 0  # 0: the next evaluation refreshes H N

    @property
    def cycle_complete(self) -> bool:
        """Whether the last probe step ended a Ritz cycle (a cycle spread over probe steps,
        budget 1, only turns N when it completes)."""
        return self.phase == 0


@dataclass
class UpdateState:
    """``rotation="update"``: the last update the base optimizer took before a probe step."""

    update: PerParameter | None = None
    cycle_complete = True


RULE_STATES: dict[str, type] = {"oja": OjaState, "ritz": RitzState, "update": UpdateState}


@dataclass
class Statistics:
    """The last probe step's read-outs, 0-d tensors on the parameters' device (NaN before)."""

    curvature: Tensor
    angle: Tensor
    grad_share: Tensor

    @classmethod
    def unknown(cls, device: torch.device) -> Statistics:
        return cls(*(torch.full((), math.nan, device=device) for _ in range(3)))


@dataclass
class Schedule:
    """When the next probe step comes (``interval_rule="angle"``; "fixed" needs no state)."""

    next_probe: int = 0
    probe_gap: int = 1


@dataclass
class SpikeTrigger:
    """The ``"spike"`` trigger's state: a loss EMA and the end of the active window."""

    ema: float = math.nan
    seen: int = 0
    active_until: int = -1  # steps < active_until are DEO steps


@dataclass
class EscapeState:
    """The checked escape step's trust radius (policies: deo/escape.py)."""

    radius: float = math.inf


@dataclass
class DEOState:
    """Everything DEO carries between steps; ``steps`` counts the steps taken."""

    direction: PerParameter  # N, shaped like the parameters
    rule: OjaState | RitzState
    stats: Statistics
    steps: int = 0
    extra_gradients: int = 0  # gradient evaluations beyond the main pass: displaced ones,
    # escape trials, an exact rule's products
    skipped_probes: int = 0  # probe steps whose loss or gradients were not finite
    inconsistent_probes: int = 0  # rotations skipped: the displaced loss disagreed
    escapes: int = 0  # checked escape steps kept (with "search": segments kept)
    escape_trials: int = 0  # and tried (segments tried)
    schedule: Schedule = field(default_factory=Schedule)
    spikes: SpikeTrigger = field(default_factory=SpikeTrigger)
    escape: EscapeState = field(default_factory=EscapeState)
    # which warnings were given (once each); not saved: a resumed run warns afresh
    warned: set[str] = field(default_factory=set, metadata={"saved": False})


    def read_outs(self) -> dict[str, Tensor]:
        """``DEO.stats``: the last statistics and the counters, as 0-d tensors."""
        counters = ("extra_gradients", "skipped_probes", "inconsistent_probes", "escapes",
                    "escape_trials")
        return {**vars(self.stats), **{k: torch.tensor(getattr(self, k)) for k in counters}}


# -- one path for every field: flatten and unflatten -----------------------------------------

def flatten(obj: Any) -> tuple[dict[str, Any], dict[str, PerParameter]]:
    """(plain values and 0-d tensors, nested as the dataclasses are; per-parameter lists).

    Per-parameter lists are keyed by their field name alone, so those names are unique
    across the whole state (``direction``, ``hvp``, ...); unset ones are left out.
    """
    values: dict[str, Any] = {}
    per_parameter: dict[str, PerParameter] = {}
    for f in dataclasses.fields(obj):
        if not f.metadata.get("saved", True):
            continue
        value = getattr(obj, f.name)
        if _is_per_parameter(type(obj), f.name):
            if value is not None:
                per_parameter[f.name] = list(value)
        elif dataclasses.is_dataclass(value):
            values[f.name], nested = flatten(value)
            per_parameter.update(nested)
        else:
            values[f.name] = value
    return values, per_parameter


def unflatten(cls: type, values: dict[str, Any], per_parameter: dict[str, PerParameter],
              device: torch.device, template: Any) -> Any:
    """The inverse of ``flatten``, each value checked against its field's type.

    A field missing from ``values`` keeps ``template``'s value (a checkpoint of an older
    version lacks the newer counters); raises TypeError or ValueError on a malformed one.
    """
    kwargs = {}
    for f in dataclasses.fields(cls):
        current = getattr(template, f.name)
        if not f.metadata.get("saved", True):
            kwargs[f.name] = current
        elif _is_per_parameter(cls, f.name):
            kwargs[f.name] = per_parameter.get(f.name)
        elif dataclasses.is_dataclass(current):
            nested = values.get(f.name, {})
            if not isinstance(nested, dict):
                raise TypeError(f"{f.name} is {type(nested).__name__}, not a dict")
            kwargs[f.name] = unflatten(type(current), nested, per_parameter, device, current)
        elif f.name not in values:
            kwargs[f.name] = current
        else:
            kwargs[f.name] = _as_type_of(current, values[f.name], f.name, device)
    return cls(**kwargs)


def _as_type_of(current: Any, value: Any, name: str, device: torch.device) -> Any:
    if isinstance(current, Tensor):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} is {type(value).__name__}, not a tensor")
        return value.detach().clone().to(device)
    if isinstance(current, int):
        if isinstance(value, float) or not isinstance(value, int | torch.Tensor):
            raise TypeError(f"{name} is {value!r}, not an int")
        return int(value)
    if isinstance(current, float):
        return float(value)
    return value


@functools.cache
def _is_per_parameter(cls: type, name: str) -> bool:
    hint = typing.get_type_hints(cls)[name]
    return hint == PerParameter or PerParameter in typing.get_args(hint)
