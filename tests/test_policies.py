"""Policies beyond the paper (deo.policies, escape step): each checked against its definition,
and the "do nothing" cases bit-identical to the base optimizer."""

import math

import pytest
import torch

import deo
from deo import policies
from deo.state import SpikeTrigger
from helpers import MLP, make_closure, quadratic, quadratic_closure


def test_effective_alpha_rules():
    assert policies.effective_alpha("fixed", 5.0, torch.tensor(1.0)) == 5.0
    gated = [float(policies.effective_alpha("curvature", 5.0, torch.tensor(c)))
             for c in (-0.1, 0.0, 2.0, math.nan)]
    assert gated == [5.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("gap, angle, expected", [
    (1, 0.01, 2), (8, 0.01, 16), (40, 0.01, 40), (8, 0.2, 8), (8, 1.0, 4), (1, 1.0, 1),
    (8, math.nan, 8)])
def test_next_probe_gap(gap, angle, expected):
    assert policies.next_probe_gap(gap, angle, interval=10) == expected


def test_spike_trigger_fires_on_a_jump_after_warm_up_and_opens_a_window():
    trigger = SpikeTrigger()
    fired, active = [], []
    for step in range(30):
        trigger, jump = policies.observe_loss(trigger, step, 3.0 if step in (5, 20) else 1.0,
                                              window=4)
        fired.append(jump)
        active.append(policies.active(trigger, step))
    assert [s for s, f in enumerate(fired) if f] == [20]  # step 5 is inside the warm-up
    assert [s for s, a in enumerate(active) if a] == [20, 21, 22, 23]


def sgd_pair(model_seed=0, **deo_kwargs):
    runs = []
    for wrapped in (False, True):
        torch.manual_seed(model_seed)
        model = MLP(batchnorm=False, dropout=0.0)
        if wrapped:
            opt = deo.DEO(model.parameters(), base=torch.optim.SGD, lr=0.05, momentum=0.9,
                          alpha=5.0, interval=3, **deo_kwargs)
        else:
            opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        runs.append((model, opt))
    return runs


def test_spike_trigger_without_jumps_is_the_base_optimizer_bit_for_bit():
    (base_model, base), (model, opt) = sgd_pair(trigger="spike")
    for step in range(25):  # a smooth loss: never 1.2x its average
        make_closure(base_model, base, step % 2)()
        base.step()
        opt.step(make_closure(model, opt, step % 2))
    assert int(opt.stats["extra_gradients"]) == 0
    assert all(torch.equal(a, b) for a, b in zip(base_model.parameters(), model.parameters()))


def test_spike_trigger_probes_and_corrects_after_a_jump():
    torch.manual_seed(0)
    model = MLP(batchnorm=False, dropout=0.0)
    opt = deo.DEO(model.parameters(), base=torch.optim.SGD, lr=0.0, alpha=1.0, interval=3,
                  displacement=1e-3, trigger="spike")
    seen = []
    opt.base.step = lambda closure=None: seen.append([p.grad.clone() for p in opt._params()])
    for step in range(16):
        closure = make_closure(model, opt, 0)
        if step == 12:  # the loss jumps: the same batch, scaled up
            def closure(inner=closure):
                return inner() * 0 + 10.0
        opt.step(closure)
    assert int(opt.stats["extra_gradients"]) == 1
    n = torch.cat([d.reshape(-1) for d in opt.direction])
    shares = [abs(float(torch.cat([g.reshape(-1) for g in grads]) @ n)) for grads in seen]
    assert all(s > 1e-6 for s in shares[:12]) and shares[15] > 1e-6  # base steps
    assert all(s < 1e-6 for s in shares[12:15])  # the window: alpha = 1 removes g's N part


def test_spike_trigger_needs_a_closure_on_every_step():
    model = MLP(batchnorm=False)
    opt = deo.DEO(model.parameters(), lr=1e-2, trigger="spike")
    with pytest.raises(RuntimeError, match="needs a closure"):
        opt.step()


def probe_steps(opt, closure, steps):
    probes, count = [], 0
    for step in range(steps):
        opt.step(closure)
        if int(opt.stats["extra_gradients"]) > count:
            probes.append(step)
            count = int(opt.stats["extra_gradients"])
    return probes


def test_angle_rule_probes_often_while_n_turns_and_rarely_once_it_settles():
    hessian, _ = quadratic(torch.linspace(-1.0, 10.0, 30))
    x = torch.nn.Parameter(torch.randn(30, dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(1)))
    opt = deo.DEO([x], base=torch.optim.SGD, lr=0.0, alpha=0.0, interval=5, rotation="ritz",
                  displacement=1e-3, interval_rule="angle")
    probes = probe_steps(opt, quadratic_closure(x, hessian), 200)
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert probes[:20] == list(range(20))  # every step while N turns fast
    assert max(gaps) == 20  # 4 x interval once N has settled
    assert len([s for s in probes if s >= 100]) <= 5  # the fixed rule probes 20 times there
    assert float(opt.curvature) == pytest.approx(-1.0, abs=1e-3)


def test_curvature_gated_alpha_leaves_a_convex_problem_to_the_base_optimizer():
    hessian, _ = quadratic(torch.linspace(0.5, 4.0, 20))
    trajectories = []
    for kwargs in ({"alpha": 0.0}, {"alpha": 5.0, "alpha_rule": "curvature"}):
        x = torch.nn.Parameter(torch.ones(20, dtype=torch.float64))
        opt = deo.DEO([x], base=torch.optim.SGD, lr=0.1, interval=2, rotation="ritz",
                      displacement=1e-3, **kwargs)
        for _ in range(15):
            opt.step(quadratic_closure(x, hessian))
        trajectories.append(x.detach().clone())
    assert torch.equal(*trajectories)


def test_curvature_gated_alpha_corrects_where_the_curvature_is_negative():
    hessian, q = quadratic(torch.tensor([-2.0, 1.0, 3.0]))
    x = torch.nn.Parameter(torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64))
    opt = deo.DEO([x], base=torch.optim.SGD, lr=0.0, alpha=1.0, alpha_rule="curvature",
                  interval=1, rotation="ritz", displacement=1e-3, probes_per_update=2)
    seen = []
    opt.base.step = lambda closure=None: seen.append(x.grad.clone())
    for _ in range(6):
        opt.step(quadratic_closure(x, hessian))
    assert float(opt.curvature) == pytest.approx(-2.0, abs=1e-6)
    assert abs(float(seen[-1] @ opt.direction[0])) < 1e-9


@pytest.mark.parametrize("eigenvalues, moves", [([-2.0, 1.0], True), ([2.0, 1.0], False)])
def test_escape_step_moves_downhill_along_negative_curvature_by_s_abs_c(eigenvalues, moves):
    hessian = torch.diag(torch.tensor(eigenvalues, dtype=torch.float64))
    x = torch.nn.Parameter(torch.tensor([1e-3, 0.5], dtype=torch.float64))
    opt = deo.DEO([x], base=torch.optim.SGD, lr=0.0, alpha=0.0, interval=1, rotation="ritz",
                  displacement=1e-3, probes_per_update=2, escape_step=0.25)
    opt.step(quadratic_closure(x, hessian))  # N -> the lowest eigenvector, e_1
    before, g = x.detach().clone(), hessian @ x.detach()
    opt.step(quadratic_closure(x, hessian))
    n, c = opt.direction[0], float(opt.curvature)
    expected = before - math.copysign(1.0, float(g @ n)) * 0.25 * max(-c, 0.0) * n
    torch.testing.assert_close(x.detach(), expected)
    assert moves == (not torch.equal(x.detach(), before))
    if moves:
        assert abs(float(n[0])) > 0.999 and c == pytest.approx(-2.0)
        assert 0.5 * x @ hessian @ x < 0.5 * before @ hessian @ before  # it went downhill


@pytest.mark.parametrize("kwargs", [{"interval_rule": "angle"}, {"trigger": "spike"},
                                    {"alpha_rule": "curvature", "escape_step": 0.1},
                                    {"escape_step": 0.1, "escape_rule": "checked"}])
def test_policies_resume_bit_identically(kwargs):
    def run(stop=None, load=None):
        torch.manual_seed(0)
        model = MLP(batchnorm=False, dropout=0.0)
        opt = deo.DEO(model.parameters(), lr=1e-2, interval=3, rotation="ritz", **kwargs)
        if load is not None:
            model.load_state_dict(load[0])
            opt.load_state_dict(load[1])
        for step in range(load[2] if load else 0, 14):
            if step == stop:
                return model.state_dict(), opt.state_dict(), step
            opt.step(make_closure(model, opt, step))
        return [p.detach().clone() for p in model.parameters()]
    straight = run()
    resumed = run(load=run(stop=7))
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed))


def test_escape_trust_caps_the_step_at_k_displacements():
    hessian = torch.diag(torch.tensor([-2.0, 1.0], dtype=torch.float64))
    x = torch.nn.Parameter(torch.tensor([1e-3, 0.5], dtype=torch.float64))
    opt = deo.DEO([x], base=torch.optim.SGD, lr=0.0, alpha=0.0, interval=1, rotation="ritz",
                  displacement=1e-3, probes_per_update=2, escape_step=0.25, escape_trust=10.0)
    opt.step(quadratic_closure(x, hessian))
    before = x.detach().clone()
    opt.step(quadratic_closure(x, hessian))
    # uncapped the step would be 0.25 |C| = 0.5; the cap is 10 dR = 0.01
    assert float((x.detach() - before).norm()) == pytest.approx(0.01, rel=1e-9)
