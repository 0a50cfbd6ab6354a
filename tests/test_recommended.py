"""deo.recommended(goal): what the docs recommend, as keyword arguments the optimizer, the
config and the bench all accept, so none of the three can drift from the others."""

import dataclasses

import pytest
import torch

import deo
from deo.bench.optimizers import FOURTH_FROZEN, frozen, parse_optimizer
from deo.bench.optimizers import recommended as bench_recommended
from deo.bench.presets import LR_SWEEP_OPTIMIZERS, build_preset, stability_optimizers
from deo.config import GOALS


@pytest.mark.parametrize("goal", GOALS)
def test_each_goal_builds_the_optimizer_the_bench_runs(goal):
    params = [torch.nn.Parameter(torch.randn(4))]
    opt = deo.DEO(params, base=torch.optim.AdamW, lr=1e-3, **deo.recommended(goal))
    spec = parse_optimizer(bench_recommended("adamw", goal))
    assert opt.config.rotation == spec.rotation
    bench_settings = {key: getattr(opt.config, key) for key in spec.options}
    assert bench_settings == spec.options
    # and DEOConfig takes the same dict (a displacement left to DEO is 10 x lr)
    config = deo.DEOConfig(**deo.recommended(goal))
    if config.displacement is None:
        config = dataclasses.replace(config, displacement=10 * 1e-3)
    assert config == opt.config


def test_the_saddle_goal_is_the_fourth_frozen_configuration():
    assert bench_recommended("sgd") == bench_recommended("sgd", "saddle") == \
        frozen("sgd", FOURTH_FROZEN)


def test_the_stability_goal_is_a_contender_of_every_stability_preset():
    name = bench_recommended("adamw", "stability")
    assert name in stability_optimizers() and name in LR_SWEEP_OPTIMIZERS
    config = deo.DEOConfig(**deo.recommended("stability"))
    assert (config.trigger, config.rotation, config.alpha) == ("spike", "ritz", 5.0)


def test_each_call_returns_a_new_dict():
    first = deo.recommended("stability")
    first["alpha"] = -3.0
    assert deo.recommended("stability")["alpha"] == 5.0


@pytest.mark.parametrize("goal", ["", "language", None, "Saddle"])
def test_an_unknown_goal_names_the_accepted_ones(goal):
    with pytest.raises(ValueError, match=r"goal: expected one of \['saddle', 'stability'\]"):
        deo.recommended(goal)


def test_fresh_seeds_and_a_subset_of_a_preset():
    preset = build_preset("stability-slingshot")
    runs = preset.runs(3, first_seed=3, only=("adopt", "adamw"))
    # the preset's order, not the order asked in; seeds 3, 4, 5 each
    assert [(name, seed) for _, name, seed in runs] == \
        [(name, seed) for name in ("adamw", "adopt") for seed in (3, 4, 5)]
    with pytest.raises(ValueError, match="only: \\['sgd'\\] is not among preset"):
        preset.runs(only=("sgd",))
    with pytest.raises(ValueError, match="first_seed: expected an integer >= 0"):
        preset.runs(first_seed=-1)
