"""DEO's checkpoints: ``DEOState`` to and from the base optimizer's state dict.

``state_dict["state"][i]`` is the base's entry for parameter i plus DEO's per-parameter
tensors under ``"deo_<field>"`` (N as ``"deo_direction"``, the Ritz rule's carried vectors);
``state_dict["deo"]`` holds every other field of the state as ``state.flatten`` lays it out,
plus the settings (``DEOConfig.to_dict()``) and the rule's name. ``base_state_dict`` takes
DEO's part out again, for the plain base optimizer. A load checks everything before it
changes anything.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import Optimizer

from .state import DEOState, flatten, unflatten

SAVED_PREFIX = "deo_"  # DEO's keys inside state_dict()["state"][index] start with it
# Settings a checkpoint does not pin: compile_step is how this process runs the step, and
# the seed only drew the initial N, which the checkpoint replaces (it is taken from there).
UNCHECKED_SETTINGS = ("compile_step", "seed")
REQUIRED = ("steps", "stats", "settings")


def to_state_dict(base: Optimizer, state: DEOState, settings: dict[str, Any]) -> dict[str, Any]:
    sd = base.state_dict()
    values, per_parameter = flatten(state)
    entries = dict(sd["state"])
    for i in range(len(state.direction)):
        ours = {SAVED_PREFIX + k: v[i] for k, v in per_parameter.items()}
        entries[i] = {**entries.get(i, {}), **ours}
    sd["state"] = entries
    sd["deo"] = {**values, "settings": settings}
    return sd


def base_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A DEO state dict as its base optimizer's: DEO's entries taken out, for
    ``torch.optim.AdamW(...).load_state_dict(base_state_dict(sd))`` and the like."""
    _check_is_deo(state_dict)
    state = {i: {k: v for k, v in entry.items() if not k.startswith(SAVED_PREFIX)}
             for i, entry in state_dict["state"].items()}
    return {**{k: v for k, v in state_dict.items() if k != "deo"},
            "state": {i: entry for i, entry in state.items() if entry}}


def from_state_dict(state_dict: dict[str, Any], current: DEOState, params: list[torch.Tensor],
                    settings: dict[str, Any]) -> tuple[DEOState, int]:
    """The ``DEOState`` and the seed saved in ``state_dict``, checked against this optimizer:
    raises ValueError, naming what is wrong, before anything is changed."""
    _check_is_deo(state_dict)
    saved = upgraded(state_dict["deo"])
    missing = [key for key in REQUIRED if key not in saved]
    if missing:
        raise ValueError(f"load_state_dict: the 'deo' entry lacks {missing}; nothing was loaded")
    _check_settings(saved["settings"], settings)
    # copies on the parameters' devices; N in the dtype it is kept in, the rule's vectors in
    # theirs (the working dtype)
    per_parameter = {key: [t.to(n.device, n.dtype if key == "direction" else t.dtype, copy=True)
                           for t, n in zip(tensors, current.direction)]
                     for key, tensors in _deo_entries(state_dict["state"], params).items()}
    try:  # every value parsed and checked before anything is changed
        template = DEOState(direction=current.direction, rule=type(current.rule)(),
                            stats=current.stats)
        loaded = unflatten(DEOState, saved, per_parameter, params[0].device, template)
        seed = int(saved["settings"].get("seed", settings["seed"]))
    except (TypeError, ValueError, AttributeError, KeyError) as error:
        raise ValueError(f"load_state_dict: the 'deo' entry holds a malformed value ({error}); "
                         f"nothing was loaded") from error
    loaded.warned = current.warned
    return loaded, seed


def upgraded(saved: dict[str, Any]) -> dict[str, Any]:
    """The ``"deo"`` entry of a checkpoint written before ``DEOState`` (deo 0.1.0 with
    ``probe_count``, ``rule_scalars`` and ``policies``) in today's layout; others as they are.
    Its per-parameter entries (``deo_direction``, the Ritz vectors) have not changed."""
    if "policies" not in saved and "probe_count" not in saved:
        return saved
    policies = saved.get("policies", {})
    escape = policies.get("escape", {})
    renamed = {"extra_gradients": saved.get("probe_count", 0),
               "rule": dict(saved.get("rule_scalars", {})),
               "schedule": {key: policies[key] for key in ("next_probe", "probe_gap")
                            if key in policies},
               "spikes": dict(policies.get("spikes", {})),
               "escape": {"radius": escape["radius"]} if "radius" in escape else {},
               "escapes": escape.get("kept", 0), "escape_trials": escape.get("tried", 0)}
    kept = {k: v for k, v in saved.items()
            if k not in ("probe_count", "rule_scalars", "policies")}
    return {**kept, **renamed}


def adopt(current: DEOState, loaded: DEOState) -> DEOState:
    """``loaded`` with N copied into ``current``'s tensors (a compiled step, a sharded N and
    anything else holding them stay valid)."""
    for n, saved in zip(current.direction, loaded.direction):
        n.copy_(saved)
    loaded.direction = current.direction
    return loaded


def _check_is_deo(state_dict: Any) -> None:
    if not isinstance(state_dict, dict) or not isinstance(state_dict.get("deo"), dict):
        raise ValueError("load_state_dict: not a DEO state dict (no 'deo' entry); a plain "
                         "optimizer's state loads into opt.base.load_state_dict(...)")
    if not isinstance(state_dict.get("state"), dict) or "param_groups" not in state_dict:
        raise ValueError("load_state_dict: the state dict lacks 'state' or 'param_groups'; "
                         "nothing was loaded")


def _check_settings(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise if the checkpoint was saved with settings that differ from ``current``."""
    differ = [f"{key}: saved {saved[key]!r}, this optimizer {current[key]!r}"
              for key in current if key in saved and key not in UNCHECKED_SETTINGS
              and saved[key] != current[key]]
    if differ:
        raise ValueError(
            "load_state_dict: the checkpoint was saved with other DEO settings ("
            + "; ".join(differ) + "). Build DEO with the saved settings "
            "(state_dict['deo']['settings']) to resume; nothing was loaded")


def _deo_entries(state: dict[Any, dict[str, Any]], params: list) -> dict[str, list]:
    """DEO's per-parameter tensors of ``state`` by field, checked against the parameters."""
    by_field: dict[str, list] = {}
    for i, p in enumerate(params):
        entry = {k[len(SAVED_PREFIX):]: v for k, v in state.get(i, {}).items()
                 if k.startswith(SAVED_PREFIX)}
        if "direction" not in entry:
            raise ValueError(f"load_state_dict: no N ('{SAVED_PREFIX}direction') for "
                             f"parameter {i}; nothing was loaded")
        for key, value in entry.items():
            if not (isinstance(value, torch.Tensor) and value.shape == p.shape):
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
                raise ValueError(
                    f"load_state_dict: '{SAVED_PREFIX}{key}' of parameter {i} is shaped "
                    f"{shape}, the parameter {tuple(p.shape)}; nothing was loaded")
            by_field.setdefault(key, [None] * len(params))[i] = value
    extra = sorted(set(state) - set(range(len(params))), key=str)
    if extra:
        raise ValueError(f"load_state_dict: state for parameters {extra}, but this optimizer "
                         f"has {len(params)}; nothing was loaded")
    incomplete = [k for k, v in by_field.items() if any(t is None for t in v)]
    if incomplete:
        raise ValueError(f"load_state_dict: {incomplete} saved for some parameters only; "
                         f"nothing was loaded")
    return by_field
