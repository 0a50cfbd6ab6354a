"""DEO's stability modes against closed-form quadratics: N at the maximum curvature
(target="max") and the damping of the gradient along it."""

import pytest
import torch

import deo
from helpers import quadratic, quadratic_closure

SPECTRUM = torch.linspace(-1.0, 10.0, 50, dtype=torch.float64)


def track(hessian, steps, **settings):
    """DEO probing every step on 0.5 x^T H x with a frozen x (SGD lr 0) and alpha 0."""
    x = torch.randn(hessian.shape[0], dtype=torch.float64, requires_grad=True,
                    generator=torch.Generator().manual_seed(1))
    opt = deo.DEO([x], base=torch.optim.SGD, lr=0.0, alpha=0.0, interval=1,
                  displacement=1e-3, target="max", **settings)
    closure = quadratic_closure(x, hessian)
    for _ in range(steps):
        opt.step(closure)
    return opt


@pytest.mark.parametrize("rotation, steps, settings", [
    ("oja", 600, {"rotation_lr": 0.1}),  # ascent, stable for lr < 2 / (10 - (-1))
    ("ritz", 60, {}),
])
def test_n_finds_the_maximum_curvature_direction(rotation, steps, settings):
    hessian, q = quadratic(SPECTRUM)
    opt = track(hessian, steps, rotation=rotation, **settings)
    (n,) = opt.direction
    assert abs(float(n @ q[:, -1])) >= 0.99
    assert float(opt.curvature) == pytest.approx(10.0, abs=0.05)


def test_damping_the_sharp_direction_lets_gd_converge_where_it_diverges():
    """GD with lr 0.05 on eigenvalues (1, 2, 50): lr x 50 = 2.5 > 2, so the sharp component
    grows by |1 - 2.5| = 1.5 a step. With N at v_max and alpha 0.9 the step along it is
    scaled by 1 - alpha: |1 - 0.25| = 0.75, and the run converges."""
    hessian, q = quadratic(torch.tensor([1.0, 2.0, 50.0], dtype=torch.float64), seed=2)
    v = q[:, -1]
    finals = {}
    for alpha in (0.0, 0.9):
        x = torch.ones(3, dtype=torch.float64, requires_grad=True)
        opt = deo.DEO([x], base=torch.optim.SGD, lr=0.05, interval=1, displacement=1e-4,
                      rotation="ritz", target="max", alpha=alpha)
        closure = quadratic_closure(x, hessian)
        raw, handed = [], []

        def recording(closure=closure, raw=raw, x=x):
            loss = closure()
            raw.append(x.grad.clone())  # the main pass's, then the displaced one's
            return loss

        base_step = opt.base.step
        opt.base.step = lambda closure=None, handed=handed, base_step=base_step, x=x: (
            handed.append(x.grad.clone()), base_step())
        mains = []
        for _ in range(200):
            first = len(raw)  # this step's main pass comes first, its displaced ones after
            loss = opt.step(recording)
            mains.append(raw[first])
        finals[alpha] = float(loss.detach())
    assert finals[0.0] > 1e20  # 1.5^200
    assert finals[0.9] < 1e-10
    # N is v_max, and (step 20, gradients still far from round-off) the gradient reaches SGD
    # with its component along v_max scaled by exactly 1 - alpha, the rest untouched
    assert abs(float(opt.direction[0] @ v)) == pytest.approx(1.0, abs=1e-9)
    g, corrected = mains[20], handed[20]
    torch.testing.assert_close(corrected @ v, 0.1 * (g @ v), rtol=1e-6, atol=1e-30)
    torch.testing.assert_close(corrected - (corrected @ v) * v, g - (g @ v) * v)


def test_target_max_refuses_the_settings_that_need_negative_curvature():
    p = [torch.nn.Parameter(torch.randn(3))]
    with pytest.raises(ValueError, match="escape_step: .*target='min'"):
        deo.DEO(p, lr=1e-3, target="max", escape_step=0.25)
    with pytest.raises(ValueError, match="alpha_rule: .*target='min'"):
        deo.DEO(p, lr=1e-3, target="max", alpha_rule="curvature")
    with pytest.raises(ValueError, match=r"target: expected one of \['min', 'max'\]"):
        deo.DEO(p, lr=1e-3, target="top")


def test_sharpness_scale_is_the_quadratic_model_along_the_update():
    from deo.sharpness import sharpness_scale

    # slope -1, curvature 2: the model's minimum is at t* = 0.5
    assert sharpness_scale(-1.0, 2.0, 0.8) == 1.0  # <= 2 t*: the loss falls, kept
    assert sharpness_scale(-1.0, 2.0, 2.0) == pytest.approx(0.25)  # cut to t* = 0.5
    assert sharpness_scale(-1.0, -2.0, 5.0) == 1.0  # negative curvature: no minimum
    assert sharpness_scale(1.0, 2.0, 5.0) == 1.0  # a step uphill along d: not this rule's
    assert sharpness_scale(-1.0, float("nan"), 5.0) == 1.0


def test_after_step_cuts_only_the_component_along_the_probed_direction():
    from deo.sharpness import after_step_

    theta = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    u = torch.tensor([3.0, 1.0, 0.0], dtype=torch.float64)
    d = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    params, before = [theta + u], [theta.clone()]
    state, scale = after_step_(params, before, [d], slope=-1.0, curvature=2.0, check=True)
    assert scale == pytest.approx(0.5 / 3.0)  # t* = 0.5 of tau = 3
    torch.testing.assert_close(params[0], theta + torch.tensor([0.5, 1.0, 0.0],
                                                               dtype=torch.float64))
    torch.testing.assert_close(state.update[0], torch.tensor([0.5, 1.0, 0.0],
                                                             dtype=torch.float64))


def test_the_sharpness_rule_lets_gd_converge_where_it_overshoots():
    """GD at lr x lambda_max = 2.5 on eigenvalues (1, 2, 50) diverges along v_max. Probing
    the curvature along the last update (which soon points along v_max) every step and
    cutting each overshooting step to the model's minimum along it converges."""
    hessian, _ = quadratic(torch.tensor([1.0, 2.0, 50.0], dtype=torch.float64), seed=2)
    finals = {}
    for rule in ("base", "sharpness"):
        x = torch.ones(3, dtype=torch.float64, requires_grad=True)
        opt = deo.DEO([x], base=torch.optim.SGD, lr=0.05, interval=1, displacement=1e-4,
                      alpha=0.0, rotation="update", step_rule=rule)
        closure = quadratic_closure(x, hessian)
        for _ in range(100):
            loss = opt.step(closure)
        finals[rule] = float(loss.detach())
    assert finals["base"] > 1e15  # 1.5^100
    assert finals["sharpness"] < 1e-6


@pytest.mark.parametrize("settings, match", [
    ({"step_rule": "sharpness"}, "step_rule: .*rotation='update'"),
    ({"rotation": "update", "scope": "tensor"}, "scope: rotation='update'"),
    ({"rotation": "update", "trigger": "spike"}, "rotation: 'update'"),
])
def test_the_sharpness_rule_refuses_what_it_cannot_do(settings, match):
    with pytest.raises(ValueError, match=match):
        deo.DEO([torch.nn.Parameter(torch.randn(3))], lr=1e-3, **settings)


def test_a_step_along_minus_d_is_judged_along_minus_d():
    from deo.sharpness import sharpness_scale

    assert sharpness_scale(1.0, 2.0, -2.0) == pytest.approx(0.25)
    assert sharpness_scale(-1.0, 2.0, -2.0) == 1.0  # uphill along -d
