"""The dimer's math against closed-form quadratics: HN, curvature, rotation rules."""

import torch

import deo
from deo import dimer
from helpers import quadratic, quadratic_closure

SPECTRUM = torch.linspace(-1.0, 10.0, 50, dtype=torch.float64)


def unit(v):
    return v / v.norm()


def test_finite_difference_hvp_is_exact_on_a_quadratic():
    hessian, _ = quadratic(SPECTRUM)
    x = torch.randn(50, dtype=torch.float64)
    n = unit(torch.randn(50, dtype=torch.float64))
    dr = 1e-3
    g, g2 = hessian @ x, hessian @ (x + dr * n)
    (hvp,) = dimer.finite_difference_hvp_([g2.clone()], [g], dr)
    torch.testing.assert_close(hvp, hessian @ n, rtol=1e-9, atol=1e-9)


def test_curvature_and_force_are_the_rayleigh_quotient_and_its_descent_direction():
    hessian, _ = quadratic(SPECTRUM)
    n = unit(torch.randn(50, dtype=torch.float64))
    hn = hessian @ n
    curv = dimer.curvature([n], [hn])
    torch.testing.assert_close(curv, n @ hessian @ n)
    lr = 1e-3
    (moved,) = dimer.rotate_oja_([hn.clone()], [n], curv, lr)
    force = curv * n - hn  # F = -(HN - C N), the step the rule takes before normalising
    assert abs(float(force @ n)) < 1e-12  # F is orthogonal to N
    torch.testing.assert_close(moved, unit(n + lr * force))
    # F = -(1/2) grad of the Rayleigh quotient on the sphere: a small step lowers it.
    assert float(moved @ hessian @ moved) < float(curv)


def test_rotate_oja_with_zero_lr_keeps_n():
    n = [unit(torch.randn(7, dtype=torch.float64)), torch.zeros(3, dtype=torch.float64)]
    hvp = [torch.randn(7, dtype=torch.float64), torch.randn(3, dtype=torch.float64)]
    new = dimer.rotate_oja_([h.clone() for h in hvp], n, dimer.curvature(n, hvp), lr=0.0)
    for a, b in zip(n, new):
        torch.testing.assert_close(a, b)


def run_oja_in_deo(hessian, steps, rotation_lr):
    """DEO probing every step on 0.5 x^T H x, with alpha=0 and a frozen x (SGD lr=0)."""
    x = torch.randn(hessian.shape[0], dtype=torch.float64, requires_grad=True)
    opt = deo.DEO([x], base=torch.optim.SGD, lr=0.0, alpha=0.0, interval=1,
                  displacement=1e-3, rotation="oja", rotation_lr=rotation_lr)
    closure = quadratic_closure(x, hessian)
    for _ in range(steps):
        opt.step(closure)
    return opt


def test_oja_in_deo_finds_the_minimum_curvature_direction():
    hessian, q = quadratic(SPECTRUM)
    # stable for lr < 2 / (lambda_max - lambda_min) = 0.18
    opt = run_oja_in_deo(hessian, steps=600, rotation_lr=0.1)
    (n,) = opt.direction
    assert abs(float(n @ q[:, 0])) >= 0.99
    assert abs(float(opt.curvature) - (-1.0)) <= 0.01
    assert int(opt.stats["extra_gradients"]) == 600


def test_first_probe_curvature_is_exact():
    hessian, _ = quadratic(SPECTRUM)
    x = torch.randn(50, dtype=torch.float64, requires_grad=True)
    opt = deo.DEO([x], base=torch.optim.SGD, lr=0.0, displacement=1e-4, rotation_lr=0.0)
    (n0,) = [n.clone() for n in opt.direction]
    opt.step(quadratic_closure(x, hessian))
    torch.testing.assert_close(opt.curvature, n0 @ hessian @ n0, rtol=1e-8, atol=1e-10)


def test_negative_control_authors_sign_converges_to_the_maximum():
    """The authors' code rotates by +(HN - C N), i.e. lr -> -lr in our rule: gradient ASCENT
    on the Rayleigh quotient, which finds v_max. Kept as a documented negative control."""
    hessian, q = quadratic(SPECTRUM)
    n = [unit(torch.randn(50, dtype=torch.float64, generator=torch.Generator().manual_seed(3)))]
    for _ in range(1500):
        hvp = [hessian @ n[0]]
        n = dimer.rotate_oja_(hvp, n, dimer.curvature(n, hvp), lr=-0.1)
    assert abs(float(n[0] @ q[:, -1])) >= 0.99
    assert abs(float(n[0] @ q[:, 0])) < 0.05
    assert float(n[0] @ hessian @ n[0]) > 9.9
