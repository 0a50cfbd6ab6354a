"""The probe step: same randomness, exact restore, what reaches the base, non-finite probes."""

import math

import pytest
import torch

import deo
from deo.distributed import dot, norm
from helpers import MLP, batch, make_closure


class SpySGD(torch.optim.SGD):
    """SGD that records the gradients it is handed."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self.seen = []

    def step(self, closure=None):
        self.seen.append([p.grad.clone() for g in self.param_groups for p in g["params"]])
        return super().step(closure)


def test_probe_sees_the_same_dropout_masks():
    torch.manual_seed(0)
    model = MLP(dropout=0.5, batchnorm=False)
    masks = []
    model.drop.register_forward_hook(lambda m, i, out: masks.append(out == 0))
    opt = deo.DEO(model.parameters(), lr=1e-2, interval=2)
    for step in range(4):
        opt.step(make_closure(model, opt, step))
    # steps 0 and 2 probe: 2 passes each; steps 1 and 3: 1 pass
    assert len(masks) == 6
    assert torch.equal(masks[0], masks[1]) and torch.equal(masks[3], masks[4])
    assert not torch.equal(masks[0], masks[2])  # a new step draws new masks


def test_probe_curvature_matches_exact_hvp_under_dropout():
    """With identical masks the dropout net is one smooth function, so the finite difference
    must agree with the exact N.H.N of that same masked function."""
    torch.manual_seed(0)
    model = MLP(dropout=0.5, batchnorm=False, dtype=torch.float64)
    opt = deo.DEO(model.parameters(), base=torch.optim.SGD, lr=0.0, displacement=1e-5,
                  rotation_lr=0.0)
    x, y = batch(0, torch.float64)
    n = [d.clone() for d in opt.direction]
    torch.manual_seed(42)
    opt.step(make_closure(model, opt, 0, torch.float64))

    params = list(model.parameters())
    torch.manual_seed(42)  # replay the masks of that step
    loss = torch.nn.functional.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    hvp = torch.autograd.grad(grads, params, grad_outputs=n)
    exact = float(dot(n, list(hvp)))
    assert float(opt.curvature) == pytest.approx(exact, rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("scope", ["global", "tensor"])
def test_alpha_one_hands_the_base_a_gradient_orthogonal_to_n(scope):
    torch.manual_seed(0)
    model = MLP(batchnorm=False)
    opt = deo.DEO(model.parameters(), base=SpySGD, lr=1e-2, alpha=1.0, interval=3,
                  rotation_lr=0.1, scope=scope)
    for step in range(7):
        opt.step(make_closure(model, opt, step))
        seen, n = opt.base.seen[-1], opt.direction
        blocks = [list(range(len(n)))] if scope == "global" else [[i] for i in range(len(n))]
        for block in blocks:
            g_b, n_b = [seen[i] for i in block], [n[i] for i in block]
            assert float(norm(n_b)) == pytest.approx(1.0, abs=1e-5)
            assert abs(float(dot(g_b, n_b))) <= 1e-5 * float(norm(g_b)) + 1e-8


def test_max_grad_norm_clips_the_corrected_gradient():
    def first_seen(**kwargs):
        torch.manual_seed(0)
        model = MLP(batchnorm=False, dropout=0.0)
        opt = deo.DEO(model.parameters(), base=SpySGD, lr=1e-2, alpha=5.0, **kwargs)
        opt.step(make_closure(model, opt, 0))
        return opt.base.seen[0]

    unclipped = first_seen()
    clipped = first_seen(max_grad_norm=1e-3)
    scale = 1e-3 / float(norm(unclipped))
    assert scale < 1
    for c, u in zip(clipped, unclipped):
        torch.testing.assert_close(c, u * scale, rtol=1e-4, atol=1e-9)


def test_non_finite_probe_skips_the_rotation_and_warns_once():
    torch.manual_seed(0)
    model = MLP(batchnorm=False, dropout=0.0)
    opt = deo.DEO(model.parameters(), lr=1e-2, interval=2, rotation_lr=0.5)
    calls = []
    x, y = batch(0)

    def closure():  # the second call of a probe step is the displaced one: poison it
        calls.append(opt.steps)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        if calls.count(opt.steps) == 2:
            loss = loss * math.nan
        loss.backward()
        return loss

    before = [n.clone() for n in opt.direction]
    with pytest.warns(RuntimeWarning, match="non-finite") as record:
        for _ in range(4):
            opt.step(closure)
    assert len([w for w in record if "non-finite" in str(w.message)]) == 1
    for a, b in zip(before, opt.direction):
        assert torch.equal(a, b)
    assert float(norm(opt.direction)) == pytest.approx(1.0, abs=1e-6)
    assert int(opt.stats["skipped_probes"]) == 2 and int(opt.stats["extra_gradients"]) == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_cheap_steps_run_without_a_closure_probe_steps_demand_one():
    torch.manual_seed(0)
    model = MLP(batchnorm=False)
    opt = deo.DEO(model.parameters(), lr=1e-2, interval=3)
    with pytest.raises(RuntimeError, match="needs a closure"):
        opt.step()
    opt.step(make_closure(model, opt, 0))
    for step in (1, 2):
        make_closure(model, opt, step)()  # forward + backward outside the optimizer
        assert opt.step() is None
    with pytest.raises(RuntimeError, match="step 3 with interval=3"):
        opt.step()


def test_parameters_without_gradients_are_left_alone():
    torch.manual_seed(0)
    model = MLP(batchnorm=False)
    unused = torch.nn.Parameter(torch.ones(4))
    opt = deo.DEO([*model.parameters(), unused], lr=1e-2, interval=2, weight_decay=0.1)
    for step in range(4):
        opt.step(make_closure(model, opt, step))
    assert unused.grad is None and torch.equal(unused.detach(), torch.ones(4))


def test_probe_restores_the_gradient_tensors_themselves():
    torch.manual_seed(0)
    model = MLP(batchnorm=False, dropout=0.0)
    opt = deo.DEO(model.parameters(), base=SpySGD, lr=0.0, alpha=0.0, displacement=1e-2)
    make_closure(model, opt, 0)()
    expected = [p.grad.clone() for p in model.parameters()]
    opt.step(make_closure(model, opt, 0))
    for seen, g in zip(opt.base.seen[0], expected):
        assert torch.equal(seen, g)


def test_tensor_scope_keeps_one_unit_direction_per_tensor():
    torch.manual_seed(0)
    model = MLP(batchnorm=False)
    opt = deo.DEO(model.parameters(), lr=1e-2, scope="tensor", rotation_lr=0.1, interval=1)
    for step in range(3):
        opt.step(make_closure(model, opt, step))
    for n in opt.direction:
        assert float(n.norm()) == pytest.approx(1.0, abs=1e-5)
    assert torch.isfinite(opt.curvature)


def test_base_instance_is_wrapped_and_equals_the_class_form():
    def run(make):
        torch.manual_seed(0)
        model = MLP(batchnorm=False, dropout=0.0)
        opt = make(model)
        for step in range(12):
            opt.step(make_closure(model, opt, step))
        return [p.detach().clone() for p in model.parameters()]

    by_class = run(lambda m: deo.DEO(m.parameters(), base=torch.optim.SGD, lr=0.1, momentum=0.9))
    by_instance = run(lambda m: deo.DEO(None, base=torch.optim.SGD(m.parameters(), lr=0.1,
                                                                   momentum=0.9)))
    for a, b in zip(by_class, by_instance):
        assert torch.equal(a, b)


def test_add_param_group_reaches_the_base_and_keeps_n_unit():
    torch.manual_seed(0)
    model = MLP(batchnorm=False)
    head = torch.nn.Linear(1, 1)
    opt = deo.DEO(model.parameters(), lr=1e-2, interval=2)
    opt.step(make_closure(model, opt, 0))
    opt.add_param_group({"params": head.parameters(), "lr": 1e-3})
    assert len(opt.base.param_groups) == 2 and opt.param_groups is opt.base.param_groups
    assert float(norm(opt.direction)) == pytest.approx(1.0, abs=1e-6)
    x, y = batch(1)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(head(model(x)), y)
        loss.backward()
        return loss

    opt.step(closure)
    opt.step(closure)  # a probe over both groups
    assert float(norm(opt.direction)) == pytest.approx(1.0, abs=1e-5)
    assert float(opt.direction[-1].abs().sum()) > 0  # the rotation reached the new group


class HutchinsonSGD(torch.optim.SGD):
    """A Sophia-like base: it differentiates the gradients again (needs create_graph)."""

    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"]]
        z = [torch.ones_like(p) for p in params]
        hz = torch.autograd.grad([p.grad for p in params], params, grad_outputs=z)
        for p, h in zip(params, hz):
            p.grad = p.grad.detach() + 1e-3 * h
        return super().step()


def test_probe_keeps_the_graph_of_create_graph_gradients_intact():
    def run(wrap):
        torch.manual_seed(0)
        model = MLP(batchnorm=False, dropout=0.0)
        opt = wrap(model)
        for step in range(4):
            x, y = batch(step)

            def closure(x=x, y=y):
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(model(x), y)
                loss.backward(create_graph=True)
                return loss

            if isinstance(opt, deo.DEO):
                opt.step(closure)
            else:
                closure()
                opt.step()
        return [p.detach().clone() for p in model.parameters()]

    alone = run(lambda m: HutchinsonSGD(m.parameters(), lr=0.1))
    wrapped = run(lambda m: deo.DEO(m.parameters(), base=HutchinsonSGD, lr=0.1, alpha=0.0,
                                    interval=2))
    for a, b in zip(alone, wrapped):
        assert torch.equal(a, b)
