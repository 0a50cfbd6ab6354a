"""Du et al. 2017's tube (deo.bench.octopus): d strict saddles with the curvature the paper
gives, a minimum where the docstring says, C^1 across the faces between its regions, and
plain gradient descent that takes much longer the more saddles it has to leave."""

from __future__ import annotations

import math

import pytest
import torch

from deo.bench.octopus import BIG_L, GAMMA, NU, TAU, Octopus, g1, g2
from deo.bench.runner import run_one
from test_bench_saddle import flat_hessian, gradient_norm, params_of, ready

H = 1e-7  # the distance to either side of a face


def value_and_gradient(task, x):
    x = x.detach().clone().requires_grad_()
    value = task.objective([x])
    (grad,) = torch.autograd.grad(value, x)
    return float(value.detach()), grad


def test_the_constants_and_the_splines_end_points():
    assert (TAU, BIG_L, GAMMA) == (math.e, math.e, 1.0)
    assert NU == pytest.approx((13 * GAMMA + 37 * BIG_L) * TAU**2 / 6, rel=1e-14)
    ends = torch.tensor([TAU, 2 * TAU], dtype=torch.float64)
    # g_1 = -gamma x^2 at tau and L (x - 4 tau)^2 - nu at 2 tau; g_2 = L at tau, -gamma at 2 tau
    assert g1(ends).tolist() == pytest.approx([-GAMMA * TAU**2, 4 * BIG_L * TAU**2 - NU])
    assert g2(ends).tolist() == pytest.approx([BIG_L, -GAMMA])


@pytest.mark.parametrize("dimension", [1, 2, 3, 5])
def test_every_saddle_is_stationary_with_one_negative_eigenvalue_minus_two_gamma(dimension):
    task = ready(Octopus, dimension=dimension)
    saddles = task.saddles()
    assert len(saddles) == dimension
    assert torch.equal(task.saddle()[0], saddles[0]) and not saddles[0].any()
    for i, saddle in enumerate(saddles):
        assert float(task.objective([saddle])) == pytest.approx(-i * NU, abs=1e-9)
        assert gradient_norm(task, [saddle]) < 1e-12
        hessian = flat_hessian(task, [saddle])
        expected = torch.full((dimension,), 2 * BIG_L, dtype=torch.float64)
        expected[i] = -2 * GAMMA
        assert torch.allclose(hessian, torch.diag(expected), atol=1e-10)
        eigenvalues = torch.linalg.eigvalsh(hessian)
        assert int((eigenvalues < 0).sum()) == 1
        assert float(eigenvalues[0]) == pytest.approx(-2 * GAMMA, abs=1e-10)
    assert task.saddle_loss == 0.0


@pytest.mark.parametrize("dimension", [1, 4, 5])
def test_the_known_minimum_is_attained_where_the_gradient_vanishes(dimension):
    task = ready(Octopus, dimension=dimension)
    minimizer = task.minimizer()
    assert torch.allclose(minimizer[0], torch.full((dimension,), 4 * TAU, dtype=torch.float64))
    assert task.known_minimum == pytest.approx(-dimension * NU)
    assert float(task.objective(minimizer)) == pytest.approx(task.known_minimum, abs=1e-9)
    assert gradient_norm(task, minimizer) < 1e-10
    hessian = flat_hessian(task, minimizer)
    assert torch.allclose(hessian, 2 * BIG_L * torch.eye(dimension, dtype=torch.float64))
    assert task.escape_threshold == pytest.approx(-dimension * NU / 2)
    assert task.known_minimum < task.escape_threshold < task.saddle_loss


def _tube_point(dimension: int, i: int, value: float) -> torch.Tensor:
    """A point of the tube with x_1..x_{i-1} escaped (in (2 tau, 6 tau), mixed signs),
    x_i = ``value`` and the coordinates ahead inside (-tau, tau)."""
    escaped = [3.1 * TAU, -5.2 * TAU, 4.6 * TAU, -2.7 * TAU, 3.9 * TAU]
    ahead = [0.4 * TAU, -0.7 * TAU, 0.2 * TAU, 0.9 * TAU, -0.5 * TAU]
    coords = escaped[:i] + [value] + ahead[:dimension - i - 1]
    return torch.tensor(coords, dtype=torch.float64)


FACES = [(i, face, sign) for i in range(4) for face in (1, 2) for sign in (1, -1)]


@pytest.mark.parametrize("i,face,sign", FACES,
                         ids=[f"x{i + 1}={'-' if s < 0 else ''}{f}tau" for i, f, s in FACES])
def test_value_and_gradient_are_continuous_across_the_faces_between_regions(i, face, sign):
    """|x_i| = tau (saddle region -> spline) and |x_i| = 2 tau (spline -> next saddle region,
    or the minimum's region for the last coordinate), in dimension 4, on both sides."""
    task = ready(Octopus, dimension=4)
    on_face = _tube_point(4, i, sign * face * TAU)
    step = torch.zeros(4, dtype=torch.float64)
    step[i] = H
    below, grad_below = value_and_gradient(task, on_face - step)
    above, grad_above = value_and_gradient(task, on_face + step)
    # either side differs by ~ 2 H |grad| (< 1e-5 here); a missing spline term would jump O(1)
    assert abs(above - below) < 1e-5
    assert float((grad_above - grad_below).norm()) < 1e-5
    assert float(grad_above.norm()) > 1e-3  # a face away from the saddles: not trivially 0


def _paper_formula(x: list[float]) -> float:
    """The paper's f written out coordinate by coordinate, for a point of the tube."""
    a = [abs(v) for v in x]
    d = len(x)
    i = next((k for k in range(d) if a[k] <= 2 * TAU), d)  # 0-based: x_{i+1} in the paper
    value = sum(BIG_L * (a[j] - 4 * TAU) ** 2 for j in range(i)) - i * NU
    if i == d:
        return value
    if a[i] <= TAU:
        return value - GAMMA * x[i] ** 2 + sum(BIG_L * x[j] ** 2 for j in range(i + 1, d))
    s, u = a[i] - TAU, (a[i] - 2 * TAU) / TAU
    spline = (-GAMMA * a[i] ** 2 + (-14 * BIG_L + 10 * GAMMA) / (3 * TAU) * s**3
              + (5 * BIG_L - 3 * GAMMA) / (2 * TAU**2) * s**4)
    if i + 1 < d:
        curvature = -GAMMA - (BIG_L + GAMMA) * (10 * u**3 + 15 * u**4 + 6 * u**5)
        spline += curvature * x[i + 1] ** 2
    return value + spline + sum(BIG_L * x[j] ** 2 for j in range(i + 2, d))


@pytest.mark.parametrize("value", [0.0, 0.5, -0.95, 0.999, 1.001, -1.3, 1.7, 1.999, -2.001])
def test_each_region_holds_the_papers_formula(value):
    task = ready(Octopus, dimension=4)
    for i in range(4):
        x = _tube_point(4, i, value * TAU)
        assert float(task.objective([x])) == pytest.approx(_paper_formula(x.tolist()),
                                                           rel=1e-12, abs=1e-9)


def test_the_pieces_differ_across_a_face_so_the_continuity_test_can_see_a_jump():
    """Without the spline (the saddle region's formula continued past |x_i| = tau) the
    value at 2 tau misses the next region's by O(nu): the test above would fail."""
    task = ready(Octopus, dimension=2)
    x = _tube_point(2, 0, 2 * TAU)
    continued = -GAMMA * float(x[0]) ** 2 + BIG_L * float(x[1]) ** 2
    assert abs(continued - float(task.objective([x]))) > 10


def test_the_mirror_images_and_a_batch_evaluate_like_single_points():
    task = ready(Octopus, dimension=3)
    generator = torch.Generator().manual_seed(0)
    points = torch.stack([_tube_point(3, i, v) for i in range(3)
                          for v in (0.3 * TAU, 1.4 * TAU, 1.9 * TAU)])
    points = torch.cat([points, torch.full((1, 3), 4.4 * TAU, dtype=torch.float64)])
    values = task.objective([points])
    assert values.shape == (len(points),)
    for point, value in zip(points, values):
        assert float(task.objective([point])) == float(value)
        signs = torch.where(torch.rand(3, generator=generator) < 0.5, -1.0, 1.0)
        assert float(task.objective([signs.double() * point])) == pytest.approx(float(value))


def test_the_start_is_next_to_the_first_saddle():
    task = ready(Octopus, seed=3, dimension=5)
    (x,) = params_of(task)
    assert 0 < float(x.detach().norm()) < 3e-3
    assert float(task.objective([x.detach()])) == pytest.approx(0.0, abs=1e-5)


def test_arguments_are_checked():
    for kwargs in ({"dimension": 0}, {"dimension": 2.0}, {"lr": 0.0}, {"steps": 0},
                   {"start_scale": -1e-3}, {"instance_seed": -1}):
        with pytest.raises(ValueError):
            Octopus(**kwargs)
    assert Octopus().lr == pytest.approx(1 / (4 * math.e))


def _gd_escape(dimension: int, seed: int) -> int:
    task = Octopus(dimension=dimension, steps=4000)
    task.stop_on_escape = True
    record = run_one(task, "gd", seed, progress=False)
    assert record.status == "ok" and record.escape_step is not None
    return record.escape_step


@pytest.mark.parametrize("seed", [0, 1])
def test_gradient_descent_takes_far_longer_with_more_saddles_to_leave(seed):
    """d = 2 leaves two saddles, d = 4 three (the threshold is half-way to the minimum):
    the extra saddle costs a multiple of all the time before it (~7x here)."""
    two, four = _gd_escape(2, seed), _gd_escape(4, seed)
    assert 100 < two < 400
    assert four > 3 * two


def test_gradient_descent_stays_in_the_tube_where_the_formulas_are_the_papers():
    """Each iterate: the coordinates before the first |x_i| <= 2 tau lie in [2 tau, 6 tau],
    those after x_{i+1} within tau (x_{i+1} too while |x_i| > tau)."""
    task = ready(Octopus, seed=1, dimension=3)
    (x,) = params_of(task)
    opt = torch.optim.SGD([x], lr=task.lr)
    for _ in range(600):
        a = x.detach().abs().tolist()
        i = next((k for k in range(3) if a[k] <= 2 * TAU), 3)
        assert all(2 * TAU <= v <= 6 * TAU for v in a[:i])
        ahead = a[i + 1:] if i < 3 and a[i] <= TAU else a[i + 2:]
        assert all(v <= TAU for v in ahead)
        opt.zero_grad()
        task.objective([x]).backward()
        opt.step()
    assert float(task.objective([x.detach()])) < task.escape_threshold
