"""displacement="auto": sqrt(eps) max(|theta|, 1) at each probe step, checked against the
closed form and against the exact curvature."""

import math
import warnings

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


def mlp_and_closure(autocast: bool):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    x, y = torch.randn(256, 20), torch.randn(256, 1)

    def loss_fn():
        return torch.nn.functional.mse_loss(model(x), y)

    def closure_for(opt):
        def closure():
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = loss_fn()
            loss.backward()
            return loss
        return closure
    return model, closure_for, loss_fn


@pytest.mark.parametrize("autocast", [False, True])
def test_auto_sees_bf16_autocast_in_the_closure_and_lengthens_the_dimer(autocast, monkeypatch):
    import deo.probe_step

    model, closure_for, _ = mlp_and_closure(autocast)
    seen = []
    real = deo.probe_step.displacement_for

    def spy(config, params, compute_dtype=None):
        seen.append((compute_dtype, real(config, params, compute_dtype)))
        return seen[-1][1]

    monkeypatch.setattr(deo.probe_step, "displacement_for", spy)
    opt = deo.DEO(model.parameters(), base=torch.optim.SGD, lr=0.0, rotation="ritz",
                  alpha=0.0, interval=1, displacement="auto", probes_per_update=2)
    opt.step(closure_for(opt))
    size = float(torch.linalg.vector_norm(torch.cat([p.detach().flatten()
                                                     for p in model.parameters()])))
    eps = torch.finfo(torch.bfloat16 if autocast else torch.float32).eps
    ((dtype, length),) = seen
    assert dtype == (torch.bfloat16 if autocast else None)
    assert length == pytest.approx(math.sqrt(eps) * size, rel=1e-5)
    assert not torch.nn.modules.module._global_forward_pre_hooks  # no hook outlives a step


def test_under_bf16_autocast_auto_reads_the_curvature_that_the_float32_length_misreads():
    """The MLP of displacement.py's docstring: 30 Ritz steps under bf16 autocast, then the
    curvature the probe read against the exact one along the N it found (float32 Hessian)."""
    errors = {}
    for displacement in ("auto", 1.7e-3):  # 1.7e-3: sqrt(eps float32) x |theta| here
        model, closure_for, loss_fn = mlp_and_closure(True)
        opt = deo.DEO(model.parameters(), base=torch.optim.SGD, lr=1e-2, rotation="ritz",
                      alpha=0.0, interval=1, displacement=displacement, probes_per_update=2)
        for _ in range(30):
            opt.step(closure_for(opt))
        product = deo.hessian.hessian_vector_product(loss_fn, list(model.parameters()),
                                                     opt.direction)
        exact = sum(float((h * n).sum()) for h, n in zip(product, opt.direction))
        errors[displacement] = abs(float(opt.curvature) - exact) / abs(exact)
    assert errors["auto"] < 0.25 < errors[1.7e-3]  # measured: 0.17 and 1.26


@pytest.mark.parametrize("failing_pass", [1, 2])  # the main pass, the first displaced one
def test_a_closure_that_raises_restores_the_parameters_and_removes_the_hook(failing_pass):
    model, closure_for, _ = mlp_and_closure(autocast=False)
    opt = deo.DEO(model.parameters(), base=torch.optim.SGD, lr=0.1, rotation="ritz",
                  alpha=0.0, interval=1, displacement="auto", probes_per_update=2)
    before = [p.detach().clone() for p in model.parameters()]
    inner, calls = closure_for(opt), []

    def closure():
        calls.append(1)
        if len(calls) == failing_pass:
            raise KeyboardInterrupt
        return inner()

    with pytest.raises(KeyboardInterrupt):
        opt.step(closure)
    assert len(calls) == failing_pass
    assert not torch.nn.modules.module._global_forward_pre_hooks
    for p, p0 in zip(model.parameters(), before):
        assert torch.equal(p, p0)  # back at the step's start, not at theta + dR N
    assert opt.deo_state.steps == 0  # the step that failed is not counted
    opt.step(closure_for(opt))  # and the next step runs normally
    assert not torch.nn.modules.module._global_forward_pre_hooks


def test_the_fixed_escape_is_capped_at_k_times_the_dR_the_probe_measured_with():
    # under bf16 autocast the probe measures over sqrt(eps_bf16)|theta|; the cap of the
    # escape step (escape_trust x dR) must use that length, not the float32 one (250x shorter)
    model, closure_for, _ = mlp_and_closure(autocast=True)
    opt = deo.DEO(model.parameters(), base=torch.optim.SGD, lr=0.0, rotation="ritz",
                  alpha=0.0, interval=1, displacement="auto", probes_per_update=2,
                  escape_step=1e6, escape_trust=1.0, escape_rule="fixed")
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    opt.step(closure_for(opt))
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert float(opt.curvature) < 0  # so the escape step is taken, at its cap
    dR = math.sqrt(torch.finfo(torch.bfloat16).eps) * float(before.norm())
    assert float((after - before).norm()) == pytest.approx(dR, rel=1e-4)


def test_the_watch_sees_autocast_through_a_torch_compile_wrapper():
    from deo.displacement import AutocastWatch

    model = torch.compile(torch.nn.Linear(4, 1), backend="eager")
    x = torch.randn(3, 4)
    watch = AutocastWatch()
    with warnings.catch_warnings(), torch.autocast("cpu", dtype=torch.bfloat16):
        warnings.simplefilter("ignore")  # torch's note that global hooks fire on the wrapper
        model(x)
    assert watch.stop() is torch.bfloat16
    assert not torch.nn.modules.module._global_forward_pre_hooks
