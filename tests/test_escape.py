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


# -- the line search (escape_rule="search") ---------------------------------------------------

def searching(x, **kwargs):
    return checked(x, escape_rule="search", escape_step=1.0, **kwargs)


def test_the_first_segment_is_the_offset_along_n_whatever_dr():
    # near a strict saddle g . N = C x offset: t_0 = |g . N| / |C| is the offset itself
    for displacement in (1e-8, 1e-2):
        assert escape.first_search_length(1.0, -2.0, -2.0 * 1e-3, displacement, None) == \
            pytest.approx(1e-3)
    assert escape.first_search_length(1.0, -2.0, 0.0, 1e-8, None) == 1e-8  # no slope: dR
    assert escape.first_search_length(0.5, -2.0, 1.0, 1e-8, 0.1) == 0.1  # capped
    assert escape.first_search_length(1.0, 2.0, 1.0, 1e-8, None) == 0.0  # convex: none


@pytest.mark.parametrize("ratio, slope, tried, expected", [
    (1.0, -1.0, 1, escape.SEARCH_GROWTH),  # the model held: SEARCH_GROWTH x longer
    (0.5, -1.0, 1, None),  # kept, but the model held less well than EXPAND: stop
    (1.0, 0.5, 1, None),  # past the bottom along d: stop
    (1.0, -1.0, escape.SEARCH_TRIALS, None),  # the trials are spent
])
def test_the_search_grows_only_while_the_model_holds_and_the_loss_descends(ratio, slope, tried,
                                                                           expected):
    assert escape.next_search_length(1.0, ratio, slope, tried, 1.0, None) == expected


def test_the_search_stops_at_the_trust_cap():
    assert escape.next_search_length(1.0, 1.0, -1.0, 1, 1.0, 3.0) == 2.0  # 3 - 1 left
    assert escape.next_search_length(1.0, 1.0, -1.0, 1, 3.0, 3.0) is None


def test_on_a_quadratic_the_search_covers_the_geometric_series_in_one_probe_step():
    # f = x_0^2 / 2 - x_1^2: the model holds exactly (rho = 1), so every segment is kept and
    # 4x longer than the last, until the trials are spent
    hessian = torch.diag(torch.tensor([1.0, -2.0], dtype=torch.float64))
    x = torch.nn.Parameter(torch.tensor([0.0, 1e-6], dtype=torch.float64))
    opt = searching(x, displacement=1e-4)
    opt.step(quadratic_closure(x, hessian))
    trials = escape.SEARCH_TRIALS
    expected = 1e-6 * (1 + sum(escape.SEARCH_GROWTH ** k for k in range(trials)))
    assert float(x.detach()[1]) == pytest.approx(expected, rel=1e-9)  # t_0 = the offset
    assert (int(opt.stats["escapes"]), int(opt.stats["escape_trials"])) == (trials, trials)
    assert int(opt.stats["extra_gradients"]) == 2 + trials  # the rotation's two, then these


def test_the_search_stops_before_the_well_and_keeps_the_last_good_segment():
    # f = x_0^2 / 2 - x_1^2 + x_1^4, well at |x_1| = 0.71: segments 1e-3 x 4^k are kept while
    # the quadratic model holds (rho >= 0.75), and the one that crosses the well is not
    x = torch.nn.Parameter(torch.tensor([0.0, 1e-3], dtype=torch.float64))
    opt = searching(x)
    seen = []
    step = opt.base.step
    opt.base.step = lambda closure=None: (seen.append(x.detach().clone()), step())[-1]
    opt.step(quartic_closure(x))
    position = abs(float(seen[-1][1]))
    assert 0.2 < position < 0.71  # well out of the saddle, not past the well
    # every kept segment was 4x the last: the position is a partial geometric sum of 1e-3
    kept = int(opt.stats["escapes"])
    assert kept >= 3
    # (t_0 = |g . N| / |C| = 1e-3 to 1e-5: the quartic term)
    growth = escape.SEARCH_GROWTH
    assert position == pytest.approx(1e-3 * (1 + sum(growth ** k for k in range(kept))),
                                     rel=1e-4)
    assert int(opt.stats["escape_trials"]) in (kept, kept + 1)  # at most one rejected


def test_the_search_needs_no_well_chosen_displacement():
    # the same start, dR 1e-8 or 1e-2: the search lands at the same point
    ends = []
    for displacement in (1e-8, 1e-2):
        x = torch.nn.Parameter(torch.tensor([0.0, 1e-3], dtype=torch.float64))
        opt = searching(x, displacement=displacement, probes_per_update=1)
        opt.direction[0].copy_(torch.tensor([0.0, 1.0], dtype=torch.float64))
        opt.step(quartic_closure(x))
        ends.append(x.detach().clone())
    torch.testing.assert_close(ends[0], ends[1], rtol=1e-3, atol=0)
