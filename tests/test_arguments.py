"""Bad input gets a clear error naming the argument and what it accepts."""

import math

import pytest
import torch

import deo


def params():
    return [torch.nn.Parameter(torch.randn(3))]


@pytest.mark.parametrize("kwargs, error, match", [
    ({"interval": 0}, ValueError, r"interval: expected an integer >= 1"),
    ({"interval": 2.5}, ValueError, r"interval"),
    ({"interval": True}, ValueError, r"interval"),
    ({"displacement": 0.0}, ValueError,
     r"displacement: expected None, 'auto' or a finite float > 0"),
    ({"displacement": -1e-3}, ValueError, r"displacement"),
    ({"displacement": math.inf}, ValueError, r"displacement"),
    ({"rotation_lr": -1e-3}, ValueError, r"rotation_lr: expected a finite float >= 0"),
    ({"rotation_lr": math.nan}, ValueError, r"rotation_lr"),
    ({"rotation": "newton"}, ValueError, r"rotation: expected one of \['oja'"),
    ({"alpha": math.nan}, ValueError, r"alpha: expected a finite real number"),
    ({"alpha": math.inf}, ValueError, r"alpha"),
    ({"alpha": "5"}, ValueError, r"alpha"),
    ({"scope": "layer"}, ValueError, r"scope: expected one of \['global', 'tensor'\]"),
    ({"max_grad_norm": 0.0}, ValueError, r"max_grad_norm"),
    ({"seed": 1.5}, TypeError, r"seed: expected an int"),
    ({"direction_dtype": torch.int32}, ValueError, r"direction_dtype: expected None or a floa"),
    ({"direction_dtype": "bfloat16"}, ValueError, r"direction_dtype"),
    ({"compile_step": 1}, TypeError, r"compile_step: expected True or False"),
    ({"alpha_rule": "adaptive"}, ValueError, r"alpha_rule: expected one of \['fixed', 'curv"),
    ({"interval_rule": "cosine"}, ValueError, r"interval_rule: expected one of \['fixed'"),
    ({"trigger": "loss"}, ValueError, r"trigger: expected one of \['always', 'spike'\]"),
    ({"escape_step": -1.0}, ValueError, r"escape_step: expected a finite float >= 0"),
    ({"escape_trust": 0.0}, ValueError, r"escape_trust: expected None or a finite float > 0"),
    ({"escape_rule": "trust"}, ValueError,
     r"escape_rule: expected one of \[.fixed., .checked., .search.\]"),
    ({"escape_step": 1.0, "scope": "tensor"}, ValueError, r"escape_step: .* scope='global'"),
])
def test_invalid_settings_name_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        deo.DEO(params(), lr=1e-3, **kwargs)


@pytest.mark.parametrize("base", ["adamw", torch.nn.Linear, 3, deo.DEO])
def test_base_must_be_an_optimizer(base):
    with pytest.raises(TypeError, match="base"):
        deo.DEO(params(), base=base, lr=1e-3)


def test_base_instance_takes_no_kwargs_and_must_own_the_params():
    own = params()
    instance = torch.optim.SGD(own, lr=0.1)
    with pytest.raises(TypeError, match="nowhere to go"):
        deo.DEO(None, base=instance, lr=0.2)
    with pytest.raises(ValueError, match="params"):
        deo.DEO(params(), base=instance)
    with pytest.raises(TypeError, match="cannot wrap another DEO"):
        deo.DEO(None, base=deo.DEO(own, lr=1e-3))
    assert deo.DEO(own, base=instance).base is instance


def test_class_base_needs_params():
    with pytest.raises(ValueError, match="params: required"):
        deo.DEO(None, base=torch.optim.SGD, lr=0.1)


def test_default_displacement_is_ten_times_lr_and_needs_a_positive_lr():
    assert deo.DEO(params(), lr=6e-4).displacement == pytest.approx(6e-3)
    with pytest.raises(ValueError, match="displacement: None means 10 x"):
        deo.DEO(params(), base=torch.optim.SGD, lr=0.0)


def test_base_kwargs_are_validated_by_the_base():
    with pytest.raises(ValueError, match="Invalid learning rate"):
        deo.DEO(params(), lr=-1.0, displacement=1e-2)
