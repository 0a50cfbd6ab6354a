"""The checked negative-curvature step (deo.escape): its trust region against hand-computed
steps on polynomials whose loss along N is known exactly."""

import math

import pytest
import torch

import deo
from deo import escape
from helpers import quadratic_closure


def test_step_length_is_s_abs_c_within_the_cap_and_the_radius():
    assert escape.step_length(0.25, -2.0, None, math.inf) == 0.5
    assert escape.step_length(0.25, -2.0, 0.1, math.inf) == 0.1
    assert escape.step_length(0.25, -2.0, None, 0.2) == 0.2
    assert escape.step_length(0.25, 2.0, None, math.inf) == 0.0
    assert escape.step_length(0.25, math.nan, None, math.inf) == 0.0


def test_trust_ratio_is_one_where_the_curvature_holds_and_negative_uphill():
    assert escape.trust_ratio(-0.3, -2.0, -2.0, 0.5) == pytest.approx(1.0)
    # t slope + C_t t^2 / 2 = -0.15 + 0.25 > 0: the loss rose along the step
    assert escape.trust_ratio(-0.3, -2.0, 2.0, 0.5) < 0


@pytest.mark.parametrize("ratio, expected", [(-1.0, 0.25), (0.05, 0.25), (0.5, 3.0),
                                             (0.9, 3.0), (1.0, 3.0)])
def test_next_radius(ratio, expected):
    assert escape.next_radius(3.0, 1.0, ratio) == expected
    assert escape.next_radius(0.5, 1.0, 0.9) == 2.0  # grows to twice the step


def checked(x, **kwargs):
    settings = {"base": torch.optim.SGD, "lr": 0.0, "alpha": 0.0, "interval": 1,
                "rotation": "ritz", "displacement": 1e-3, "probes_per_update": 2,
                "escape_step": 0.25, "escape_rule": "checked", **kwargs}
    return deo.DEO([x], **settings)


def test_on_a_quadratic_the_checked_step_is_the_fixed_one_and_is_kept():
    hessian = torch.diag(torch.tensor([-2.0, 1.0], dtype=torch.float64))
    x = torch.nn.Parameter(torch.tensor([1e-3, 0.5], dtype=torch.float64))
    opt = checked(x)
    before = x.detach().clone()
    opt.step(quadratic_closure(x, hessian))  # N -> e_1 (two evaluations), then the escape
    n = opt.direction[0]
    assert abs(float(n[0])) > 0.999 and float(opt.curvature) == pytest.approx(-2.0)
    expected = before - math.copysign(0.25 * 2.0, float(hessian @ before @ n)) * n
    torch.testing.assert_close(x.detach(), expected)
    assert (int(opt.stats["escapes"]), int(opt.stats["escape_trials"])) == (1, 1)
    assert int(opt.stats["extra_gradients"]) == 3  # two for the rotation, one for the trial
    assert opt.deo_state.escape.radius == math.inf  # rho = 1 on a quadratic


def quartic_closure(x):
    """f = x_0^2 / 2 - x_1^2 + x_1^4: curvature -2 along x_1 at 0, uphill beyond |x_1| = 1."""
    def closure():
        x.grad = None
        loss = 0.5 * x[0] ** 2 - x[1] ** 2 + x[1] ** 4
        loss.backward()
        return loss
    return closure


def test_steps_that_go_uphill_are_undone_and_shrink_the_radius():
    x = torch.nn.Parameter(torch.tensor([0.3, 1e-4], dtype=torch.float64))
    opt = checked(x, escape_step=2.0)  # t = 2 |C| = 4: far past the well at |x_1| = 0.71
    seen = []
    step = opt.base.step
    opt.base.step = lambda closure=None: (seen.append((x.detach().clone(), x.grad.clone())),
                                          step())[-1]
    lengths, kept = [], []
    for _ in range(3):
        before = x.detach().clone()
        opt.step(quartic_closure(x))
        lengths.append(float((x.detach() - before).norm()))
        kept.append(int(opt.stats["escapes"]))
    # 4 and then 1 (= 4 / 4) end uphill (the trapezoid says so); 0.25 descends and is kept
    assert lengths[:2] == [0.0, 0.0] and lengths[2] == pytest.approx(0.25, rel=1e-3)
    assert kept == [0, 0, 1] and int(opt.stats["escape_trials"]) == 3
    assert opt.deo_state.escape.radius == pytest.approx(0.5, rel=1e-3)  # rho > 0.75: 2 t
    # the base step starts from the kept point with the gradient there
    point, grad = seen[-1]
    assert abs(float(point[1])) == pytest.approx(0.25, rel=1e-2)
    expected = torch.stack([point[0], -2 * point[1] + 4 * point[1] ** 3])
    torch.testing.assert_close(grad, expected)


def test_steps_shorter_than_the_displacement_are_not_tried():
    hessian = torch.diag(torch.tensor([-2.0, 1.0], dtype=torch.float64))
    x = torch.nn.Parameter(torch.tensor([1e-3, 0.5], dtype=torch.float64))
    opt = checked(x, escape_step=1e-4)  # t = 2e-4 < dR = 1e-3
    before = x.detach().clone()
    opt.step(quadratic_closure(x, hessian))
    assert torch.equal(x.detach(), before) and int(opt.stats["escape_trials"]) == 0
