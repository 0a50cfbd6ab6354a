"""DEO's checkpoints: the base optimizer's state dict with DEO's state folded in.

``state_dict()["state"][i]`` is the base's entry for parameter i plus DEO's per-parameter
tensors under ``"deo_<key>"`` (N as ``"deo_direction"``, the Ritz rule's carried vectors);
``state_dict()["deo"]`` holds the counters, the rotation rule's and the policies' scalar state,
the last statistics and the settings. A plain torch optimizer ignores nothing it knows, so the
base part loads into ``opt.base`` as it is.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

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
                 "skipped_probes": opt._skipped_probes, "stats": dict(opt._stats),
                 "rule_scalars": dict(opt._rule_scalars),
                 "policies": {"next_probe": opt._next_probe, "probe_gap": opt._probe_gap,
                              "spikes": dataclasses.asdict(opt._spikes),
                              "escape": {"radius": opt._escape_radius, "kept": opt._escapes,
                                         "tried": opt._escape_trials}},
                 "settings": opt.settings()}
    return sd


def load_deo_state_dict(opt: DEO, state_dict: dict[str, Any]) -> None:
    if "deo" not in state_dict:
        raise ValueError("load_state_dict: not a DEO state dict (no 'deo' entry); to load a "
                         "plain optimizer's state use opt.base.load_state_dict(...)")
    saved = state_dict["deo"]
    if saved["settings"]["scope"] != opt.scope:
        raise ValueError(f"load_state_dict: saved with scope={saved['settings']['scope']!r}, "
                         f"this optimizer has scope={opt.scope!r}")
    base_state, ours = {}, {}
    for i, entry in state_dict["state"].items():
        base_state[i] = {k: v for k, v in entry.items() if not k.startswith(SAVED_PREFIX)}
        ours[i] = {k[len(SAVED_PREFIX):]: v for k, v in entry.items()
                   if k.startswith(SAVED_PREFIX)}
    opt.base.load_state_dict({**state_dict, "state": {i: e for i, e in base_state.items() if e}})
    opt.param_groups = opt.base.param_groups  # the base built new group dicts
    for i, p in enumerate(opt._params()):
        direction = opt.state[p][DIRECTION]
        opt.state[p].clear()
        opt.state[p][DIRECTION] = direction
        for key, value in ours.get(i, {}).items():
            if key == DIRECTION:
                direction.copy_(value)
            else:  # the rule's vectors keep their (working) dtype
                opt.state[p][key] = value.to(direction.device, copy=True)
    opt._rule_scalars = dict(saved.get("rule_scalars", {}))
    opt.steps = int(saved["steps"])
    opt._probe_count = int(saved["probe_count"])
    opt._skipped_probes = int(saved["skipped_probes"])
    device = opt._params()[0].device
    opt._stats = {k: v.detach().clone().to(device) for k, v in saved["stats"].items()}
    policy_state = saved.get("policies", {})
    opt._next_probe = int(policy_state.get("next_probe", opt.steps))
    opt._probe_gap = int(policy_state.get("probe_gap", 1))
    opt._spikes = SpikeTrigger(**policy_state.get("spikes", {}))
    escape = policy_state.get("escape", {})
    opt._escape_radius = float(escape.get("radius", math.inf))
    opt._escapes, opt._escape_trials = int(escape.get("kept", 0)), int(escape.get("tried", 0))
