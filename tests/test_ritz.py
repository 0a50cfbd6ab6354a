"""rotation="ritz": scale-free Rayleigh-Ritz rotation, checked on closed-form quadratics."""

import io

import pytest
import torch

import deo
from deo import dimer
from deo.state import RitzState
from helpers import MLP, make_closure, quadratic, quadratic_closure

WIDE_SPECTRUM = torch.linspace(-1.0, 1000.0, 200, dtype=torch.float64)


def evaluations_to_converge(hessian, q, budget, limit=400, **kwargs):
    """Displaced-gradient evaluations until cos(N, v_min) >= 0.99 and C within 1%."""
    x = torch.randn(hessian.shape[0], dtype=torch.float64, requires_grad=True,
                    generator=torch.Generator().manual_seed(5))
    opt = deo.DEO([x], base=torch.optim.SGD, lr=0.0, alpha=0.0, interval=1,
                  displacement=1e-3, probes_per_update=budget, **kwargs)
    closure = quadratic_closure(x, hessian)
    lam_min = float(q[:, 0] @ hessian @ q[:, 0])
    while int(opt.stats["extra_gradients"]) < limit:
        opt.step(closure)
        (n,) = opt.direction
        if abs(float(n @ q[:, 0])) >= 0.99 and \
                abs(float(n @ hessian @ n) - lam_min) <= 0.01 * abs(lam_min):
            return int(opt.stats["extra_gradients"]), opt
    return None, opt


@pytest.mark.parametrize("budget", [1, 2, 5])
def test_ritz_finds_v_min_of_a_wide_spectrum_within_200_evaluations(budget):
    hessian, q = quadratic(WIDE_SPECTRUM, seed=1)
    count, opt = evaluations_to_converge(hessian, q, budget, rotation="ritz")
    assert count is not None and count <= 200
    # the reported curvature is the Ritz value: within 1% of lambda_min too
    assert float(opt.curvature) == pytest.approx(-1.0, rel=0.01)


def test_ritz_is_invariant_to_the_scale_of_the_loss():
    hessian, q = quadratic(WIDE_SPECTRUM, seed=1)
    count, _ = evaluations_to_converge(hessian, q, 2, rotation="ritz")
    scaled, _ = evaluations_to_converge(1000.0 * hessian, q, 2, rotation="ritz")
    assert count is not None and count == scaled


def test_paper_oja_default_does_not_converge_on_the_wide_spectrum():
    hessian, q = quadratic(WIDE_SPECTRUM, seed=1)
    count, _ = evaluations_to_converge(hessian, q, 1, limit=200, rotation="oja")
    assert count is None


def test_one_ritz_update_on_a_three_dimensional_problem_is_exact():
    """In 3 dimensions span{N, P, W} is the whole space: one step lands on v_min."""
    hessian, q = quadratic(torch.tensor([-2.0, 1.0, 5.0], dtype=torch.float64), seed=3)
    n = [torch.tensor([0.6, 0.0, 0.8], dtype=torch.float64)]
    p = [torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)]
    calls = []

    def hvp(v):
        calls.append(v)
        return [hessian @ v[0]]

    carried = RitzState(hvp=hvp(n), previous=p, hvp_previous=hvp(p), phase=1)
    rotation = dimer.run_rule(dimer.ritz_rule, n, hvp, carried, dimer.RuleSettings(budget=1))
    new_n, new_hn = rotation.direction, rotation.state.hvp
    assert len(calls) == 3  # N and P given above, W evaluated inside: one evaluation per step
    assert abs(float(new_n[0] @ q[:, 0])) == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(new_hn[0], hessian @ new_n[0])


def test_ritz_extra_gradients_is_exact_per_budget():
    torch.manual_seed(0)
    model = MLP(batchnorm=False, dropout=0.0)
    opt = deo.DEO(model.parameters(), lr=1e-2, interval=2, rotation="ritz", probes_per_update=3)
    for step in range(6):  # probes at 0, 2, 4
        opt.step(make_closure(model, opt, step))
    assert int(opt.stats["extra_gradients"]) == 9


def test_ritz_resume_is_bit_identical():
    def build():
        torch.manual_seed(0)
        model = MLP(batchnorm=False, dropout=0.0)
        return model, deo.DEO(model.parameters(), lr=1e-2, interval=2, rotation="ritz",
                              probes_per_update=1, hessian_memory=0.5)

    model, opt = build()
    for step in range(12):
        opt.step(make_closure(model, opt, step))

    first, first_opt = build()
    for step in range(7):
        first_opt.step(make_closure(first, first_opt, step))
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": first_opt.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer)
    assert "deo_previous" in checkpoint["opt"]["state"][0]
    resumed, resumed_opt = build()
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt.load_state_dict(checkpoint["opt"])
    for step in range(7, 12):
        resumed_opt.step(make_closure(resumed, resumed_opt, step))
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(opt.direction, resumed_opt.direction):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs, match", [
    ({"rotation": "ritz", "scope": "tensor"}, "scope: rotation='ritz'"),
    ({"probes_per_update": 0}, "probes_per_update: expected an integer >= 1"),
    ({"hessian_memory": 1.0}, r"hessian_memory: expected a float in \[0, 1\)"),
    ({"ritz_window": 0}, r"ritz_window: expected an integer >= 1"),
])
def test_ritz_settings_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        deo.DEO([torch.nn.Parameter(torch.ones(2))], lr=1e-3, **kwargs)


def test_averaging_over_batches_finds_the_expected_hessians_v_min():
    """Each 'batch' sees H_b = H + E_b, E_b symmetric Gaussian noise: batch v_min shares only
    |cos| ~ 0.5 with v_min(H), as minibatch Hessians of the GPT do. Ground truth is H.
    Carrying H N across batches (hessian_memory) must recover H's negative curvature that
    the batch-by-batch rotation only partly finds."""
    d = 100
    mean_hessian, q = quadratic(torch.linspace(-1.0, 50.0, d, dtype=torch.float64), seed=1)

    def batch_hessian(step):
        g = torch.randn(d, d, generator=torch.Generator().manual_seed(10_000 + step),
                        dtype=torch.float64)
        return mean_hessian + 4.0 * (g + g.T) / (2 * d) ** 0.5

    _, v = torch.linalg.eigh(batch_hessian(0))
    assert abs(float(v[:, 0] @ q[:, 0])) < 0.6  # the batch's v_min is not H's

    def share_of_lambda_min(**kwargs):
        x = torch.zeros(d, dtype=torch.float64, requires_grad=True)
        opt = deo.DEO([x], base=torch.optim.SGD, lr=0.0, alpha=0.0, interval=1,
                      displacement=1e-3, rotation="ritz", probes_per_update=2, **kwargs)

        def closure():
            x.grad = None
            loss = 0.5 * x @ batch_hessian(opt.steps) @ x
            loss.backward()
            return loss

        for _ in range(200):
            opt.step(closure)
        (n,) = opt.direction
        return float(n @ mean_hessian @ n) / -1.0

    assert share_of_lambda_min(hessian_memory=0.9) >= 0.7
    assert share_of_lambda_min(hessian_memory=0.8, ritz_window=5) >= 0.7
    assert share_of_lambda_min() < 0.5


@pytest.mark.parametrize("budget", [1, 2])
def test_curvature_stays_within_the_batch_spectra_when_every_batch_differs(budget):
    """Products carried from other batches must not compound: the carried direction P only
    enters the basis while it is far enough from N (dimer.MIN_P_LENGTH). Every evaluation
    sees a new H_b = H + E_b with noise larger than H's own spread, the stochastic regime of
    the GPT, where the Ritz curvature once ran away to -4e23."""
    d = 60
    mean_hessian, _ = quadratic(torch.linspace(-1.0, 5.0, d, dtype=torch.float64), seed=2)
    calls = []

    def batch_hessian():
        g = torch.randn(d, d, generator=torch.Generator().manual_seed(20_000 + len(calls)),
                        dtype=torch.float64)
        calls.append(None)
        return mean_hessian + 20.0 * (g + g.T) / (2 * d) ** 0.5

    bound = 2 * max(float(torch.linalg.eigvalsh(batch_hessian()).abs().max()) for _ in range(20))
    x = torch.zeros(d, dtype=torch.float64, requires_grad=True)
    opt = deo.DEO([x], base=torch.optim.SGD, lr=0.0, alpha=0.0, interval=1,
                  displacement=1e-3, rotation="ritz", probes_per_update=budget)

    def closure():
        x.grad = None
        loss = 0.5 * x @ batch_hessian() @ x
        loss.backward()
        return loss

    curvatures = []
    for _ in range(300):
        opt.step(closure)
        curvatures.append(abs(float(opt.curvature)))
    assert max(curvatures) < bound, f"|C| reached {max(curvatures):.3g}, bound {bound:.3g}"
