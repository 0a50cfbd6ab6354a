"""DEO's checkpoints: the base optimizer's state dict with DEO's state folded in.

``state_dict()["state"][i]`` is the base's entry for parameter i plus DEO's per-parameter
tensors under ``"deo_<key>"`` (N as ``"deo_direction"``, the Ritz rule's carried vectors);
``state_dict()["deo"]`` holds the counters, the rotation rule's and the policies' scalar state,
the last statistics and the settings. ``base_state_dict`` takes DEO's part out again, for
the plain base optimizer. A load checks everything before it changes anything.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import torch

from .policies import SpikeTrigger

if TYPE_CHECKING:
    from .optimizer import DEO

DIRECTION = "direction"  # per-parameter state key of N
SAVED_PREFIX = "deo_"  # DEO's keys inside state_dict()["state"][index] start with it


def deo_state_dict(opt: DEO) -> dict[str, Any]:
    sd = opt.base.state_dict()
    state = dict(sd["state"])
    for i, p in enumerate(opt._params()):
        ours = {SAVED_PREFIX + k: v for k, v in opt.state[p].items()}
        state[i] = {**state.get(i, {}), **ours}
    sd["state"] = state
    sd["deo"] = {"steps": opt.steps, "probe_count": opt._probe_count,
                 "skipped_probes": opt._skipped_probes,
                 "inconsistent_probes": opt._inconsistent_probes, "stats": dict(opt._stats),
                 "rule_scalars": dict(opt._rule_scalars),
                 "policies": {"next_probe": opt._next_probe, "probe_gap": opt._probe_gap,
                              "spikes": dataclasses.asdict(opt._spikes),
                              "escape": {"radius": opt._escape_radius, "kept": opt._escapes,
                                         "tried": opt._escape_trials}},
                 "settings": opt.settings()}
    return sd


# Settings a checkpoint does not pin: compile_step is how this process runs the step, and
# the seed only drew the initial N, which the checkpoint replaces (it is taken from there).
UNCHECKED_SETTINGS = ("compile_step", "seed")
REQUIRED = ("steps", "probe_count", "skipped_probes", "stats", "settings")


def base_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A DEO state dict as its base optimizer's: DEO's entries taken out, for
    ``torch.optim.AdamW(...).load_state_dict(base_state_dict(sd))`` and the like."""
    _check_is_deo(state_dict)
    state = {i: {k: v for k, v in entry.items() if not k.startswith(SAVED_PREFIX)}
             for i, entry in state_dict["state"].items()}
    return {**{k: v for k, v in state_dict.items() if k != "deo"},
            "state": {i: entry for i, entry in state.items() if entry}}


def load_deo_state_dict(opt: DEO, state_dict: dict[str, Any]) -> None:
    """Load all of ``state_dict`` into ``opt`` or, raising ValueError, nothing."""
    _check_is_deo(state_dict)
    saved = state_dict["deo"]
    missing = [key for key in REQUIRED if key not in saved]
    if missing:
        raise ValueError(f"load_state_dict: the 'deo' entry lacks {missing}; nothing was loaded")
    _check_settings(saved["settings"], opt.settings())
    params = opt._params()
    ours = _deo_entries(state_dict["state"], params)
    device = params[0].device
    try:  # every scalar parsed before anything is changed
        policy_state = saved.get("policies", {})
        escape = policy_state.get("escape", {})
        scalars = {
            "seed": int(saved["settings"].get("seed", opt.seed)),
            "_rule_scalars": dict(saved.get("rule_scalars", {})),
            "steps": int(saved["steps"]),
            "_probe_count": int(saved["probe_count"]),
            "_skipped_probes": int(saved["skipped_probes"]),
            "_inconsistent_probes": int(saved.get("inconsistent_probes", 0)),
            "_stats": {k: v.detach().clone().to(device) for k, v in saved["stats"].items()},
            "_next_probe": int(policy_state.get("next_probe", saved["steps"])),
            "_probe_gap": int(policy_state.get("probe_gap", 1)),
            "_spikes": SpikeTrigger(**policy_state.get("spikes", {})),
            "_escape_radius": float(escape.get("radius", math.inf)),
            "_escapes": int(escape.get("kept", 0)),
            "_escape_trials": int(escape.get("tried", 0)),
        }
        lacking = {"curvature", "angle", "grad_share"} - set(scalars["_stats"])
        if lacking:
            raise ValueError(f"the statistics lack {sorted(lacking)}")
    except (TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"load_state_dict: the 'deo' entry holds a malformed value ({error}); "
                         f"nothing was loaded") from error
    opt.base.load_state_dict(base_state_dict(state_dict))  # validates the groups itself
    # Nothing below can fail: every value was checked above.
    for i, p in enumerate(params):
        direction = opt.state[p][DIRECTION]
        opt.state[p].clear()
        opt.state[p][DIRECTION] = direction
        for key, value in ours[i].items():
            if key == DIRECTION:
                direction.copy_(value)
            else:  # the rule's vectors keep their (working) dtype
                opt.state[p][key] = value.to(direction.device, copy=True)
    for name, value in scalars.items():
        setattr(opt, name, value)


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


def _deo_entries(state: dict[Any, dict[str, Any]], params: list) -> list[dict[str, Any]]:
    """DEO's per-parameter tensors of ``state``, checked against the parameters."""
    entries = []
    for i, p in enumerate(params):
        entry = {k[len(SAVED_PREFIX):]: v for k, v in state.get(i, {}).items()
                 if k.startswith(SAVED_PREFIX)}
        if DIRECTION not in entry:
            raise ValueError(f"load_state_dict: no N ('{SAVED_PREFIX}{DIRECTION}') for "
                             f"parameter {i}; nothing was loaded")
        for key, value in entry.items():
            if not (isinstance(value, torch.Tensor) and value.shape == p.shape):
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
                raise ValueError(
                    f"load_state_dict: '{SAVED_PREFIX}{key}' of parameter {i} is shaped "
                    f"{shape}, the parameter {tuple(p.shape)}; nothing was loaded")
        entries.append(entry)
    extra = sorted(set(state) - set(range(len(params))), key=str)
    if extra:
        raise ValueError(f"load_state_dict: state for parameters {extra}, but this optimizer "
                         f"has {len(params)}; nothing was loaded")
    return entries
