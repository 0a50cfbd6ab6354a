"""displacement="auto": sqrt(eps) max(|theta|, 1) at each probe step, checked against the
closed form and against the exact curvature."""

import math

import pytest
import torch

import deo
from deo.config import DEOConfig
from deo.displacement import displacement_for


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_auto_is_sqrt_eps_times_the_parameter_norm_floored_at_one(dtype):
    eps = torch.finfo(dtype).eps
    big = [torch.full((4,), 1.5, dtype=dtype), torch.zeros(5, dtype=dtype)]  # |theta| = 3
    small = [torch.full((4,), 1e-3, dtype=dtype)]
    auto = DEOConfig(displacement="auto")
    assert displacement_for(auto, big) == pytest.approx(math.sqrt(eps) * 3.0, rel=1e-2)
    assert displacement_for(auto, small) == pytest.approx(math.sqrt(eps))
    # the widest epsilon decides in mixed precision; a number is used as given
    assert displacement_for(auto, [*big, torch.zeros(2, dtype=torch.bfloat16)]) == \
        pytest.approx(math.sqrt(torch.finfo(torch.bfloat16).eps) * 3.0, rel=1e-2)
    assert displacement_for(DEOConfig(displacement=0.25), big) == 0.25


def test_auto_measures_the_exact_curvature_where_ten_times_lr_does_not():
    # f = -x^2 + x^3 / 3 (+ a convex y): at x = 0.1 the curvature along x is -2 + 2x = -1.8.
    # A long dimer reads the secant -2 + 2x + dR, the auto one the curvature.
    def closure_for(p):
        def closure():
            p.grad = None
            loss = -p[0] ** 2 + p[0] ** 3 / 3 + p[1] ** 2
            loss.backward()
            return loss
        return closure

    curvatures = {}
    for displacement in ("auto", None):
        p = torch.nn.Parameter(torch.tensor([0.1, 0.0], dtype=torch.float64))
        opt = deo.DEO([p], base=torch.optim.SGD, lr=0.03, alpha=0.0, rotation="ritz",
                      displacement=displacement, probes_per_update=2)
        opt.step(closure_for(p))
        curvatures[displacement] = float(opt.curvature)
    assert curvatures["auto"] == pytest.approx(-1.8, abs=1e-6)
    assert abs(curvatures[None] - -1.8) > 0.1  # dR = 10 x 0.03 = 0.3: the secant


def test_auto_follows_the_parameters_and_survives_a_checkpoint():
    p = torch.nn.Parameter(torch.full((4,), 2.0))
    opt = deo.DEO([p], base=torch.optim.SGD, lr=0.1, displacement="auto")
    assert opt.config.displacement == "auto"  # not frozen at construction
    state = opt.state_dict()
    again = deo.DEO([p], base=torch.optim.SGD, lr=0.1, displacement="auto")
    again.load_state_dict(state)  # the same settings: accepted


def test_bad_displacements_name_the_accepted_values():
    with pytest.raises(ValueError, match="displacement: expected None, 'auto' or a finite"):
        DEOConfig(displacement="automatic")
