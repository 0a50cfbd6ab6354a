"""deo.bench.oracle: DEO whose N is the exact Hessian's v_min, checked against ground truth."""

from __future__ import annotations

import math

import pytest
import torch

from deo.bench.optimizers import NAMES, ORACLE_NAMES, build_optimizer, parse_optimizer
from deo.bench.oracle import OracleDEO
from deo.bench.runner import run_one
from deo.bench.saddle import QuadraticSaddle
from deo.hessian import cosine, extreme_eigenpairs
from helpers import MLP, batch, quadratic


def mse_loss_fn(model, step: int, dtype):
    x, y = batch(step, dtype)
    return lambda: torch.nn.functional.mse_loss(model(x), y)


def closure_of(opt, loss_fn):
    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss
    return closure


def test_probe_finds_the_exact_min_eigenpair_of_a_quadratic_and_corrects_with_it():
    # d = 100 > dense_below: the Lanczos path; lambda_min = -1 is isolated.
    hessian, q = quadratic(torch.cat([torch.tensor([-1.0]), torch.linspace(0.5, 4.0, 99)]))
    x = torch.randn(100, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x.requires_grad_()
    opt = OracleDEO([x], base=torch.optim.SGD, lr=0.1, alpha=2.0, interval=5)
    old = opt.direction[0].clone()
    x0, g = x.detach().clone(), hessian @ x.detach()
    loss_fn = lambda: 0.5 * x @ hessian @ x  # noqa: E731
    opt.step(closure_of(opt, loss_fn), loss_fn=loss_fn)
    n = opt.direction[0]
    assert abs(cosine([n], [q[:, 0]])) > 0.999
    assert float(opt.curvature) == pytest.approx(-1.0, abs=1e-6)
    assert float(n.norm()) == pytest.approx(1.0) and float(n @ old) >= 0  # kept orientation
    assert float(opt.stats["angle"]) == pytest.approx(math.acos(float(n @ old)), abs=1e-9)
    assert int(opt.stats["extra_gradients"]) > 1  # one gradient with graph + each Hv
    corrected = g - 2.0 * (g @ n) * n  # plain SGD: x1 = x0 - lr (g - alpha (g.N) N)
    torch.testing.assert_close(x.detach(), x0 - 0.1 * corrected)


def test_hessian_is_of_the_batch_loss_with_the_main_pass_dropout_masks():
    torch.manual_seed(0)
    model = MLP(dropout=0.3, dtype=torch.float64)
    params = list(model.parameters())
    loss_fn = mse_loss_fn(model, 0, torch.float64)
    rng = torch.get_rng_state()
    truth = extreme_eigenpairs(loss_fn, params)  # with the masks the step will draw
    torch.set_rng_state(rng)
    opt = OracleDEO(params, base=torch.optim.SGD, lr=0.0, interval=3, displacement=1e-3)
    opt.step(closure_of(opt, loss_fn), loss_fn=loss_fn)
    assert abs(cosine(opt.direction, truth.v_min)) > 0.999
    assert float(opt.curvature) == pytest.approx(truth.lambda_min, rel=1e-5)


def test_alpha_zero_is_bit_identical_to_the_base_with_dropout_and_batchnorm():
    def train(make_opt) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = MLP(dropout=0.3)
        opt = make_opt(model.parameters())
        for step in range(5):
            loss_fn = mse_loss_fn(model, step, torch.float32)
            if isinstance(opt, OracleDEO):
                opt.step(closure_of(opt, loss_fn), loss_fn=loss_fn)
            else:
                closure_of(opt, loss_fn)()
                opt.step()
        return [t.detach().clone() for t in model.state_dict().values()]

    base = train(lambda ps: torch.optim.AdamW(ps, lr=1e-2))
    oracle = train(lambda ps: OracleDEO(ps, base=torch.optim.AdamW, lr=1e-2, alpha=0.0,
                                        interval=2, lanczos_tol=1e-4))
    assert all(torch.equal(a, b) for a, b in zip(base, oracle))  # params and BN buffers


def test_probe_leaves_the_main_gradients_in_grad():
    torch.manual_seed(0)
    model = MLP(dropout=0.3, dtype=torch.float64)
    opt = OracleDEO(model.parameters(), base=torch.optim.SGD, lr=0.1, alpha=0.0)
    main, seen = [], []
    loss_fn = mse_loss_fn(model, 0, torch.float64)

    def closure():
        loss = closure_of(opt, loss_fn)()
        main.extend(p.grad.clone() for p in model.parameters())
        return loss

    base_step = opt.base.step
    opt.base.step = lambda: (seen.extend(p.grad.clone() for p in model.parameters()),
                             base_step())
    opt.step(closure, loss_fn=loss_fn)
    assert int(opt.stats["extra_gradients"]) > 0 and len(seen) == len(main)
    assert all(torch.equal(a, b) for a, b in zip(main, seen))


def test_missing_loss_fn_is_a_clear_error_on_probe_steps_only():
    x = torch.ones(3, requires_grad=True)
    opt = OracleDEO([x], base=torch.optim.SGD, lr=0.1, interval=2)
    loss_fn = lambda: (x**2).sum() - x[0] ** 3  # noqa: E731
    with pytest.raises(ValueError, match="needs loss_fn= on probe steps"):
        opt.step(closure_of(opt, loss_fn))
    assert opt.steps == 0 and x.grad is None
    opt.step(closure_of(opt, loss_fn), loss_fn=loss_fn)
    opt.step(closure_of(opt, loss_fn))  # step 1: no probe, no loss_fn needed
    with pytest.raises(ValueError, match="scope"):
        OracleDEO([x], base=torch.optim.SGD, lr=0.1, scope="tensor")


def test_oracle_names_parse_and_build():
    assert set(ORACLE_NAMES) == {"deo-oracle-gd", "deo-oracle-sgd", "deo-oracle-adam",
                                 "deo-oracle-adamw"}
    assert not set(ORACLE_NAMES) & set(NAMES)  # the quick preset stays as it was
    spec = parse_optimizer("deo-oracle-adamw:alpha=1,interval=3")
    assert (spec.base, spec.rotation, spec.options) == ("adamw", "oracle",
                                                         {"alpha": 1, "interval": 3})
    with pytest.raises(ValueError, match="unknown name"):
        parse_optimizer("deo-oracle-pgd")
    x = torch.zeros(2, requires_grad=True)
    opt, _ = build_optimizer("deo-oracle-adam:interval=4", [{"params": [x]}], lr=1e-3)
    assert isinstance(opt, OracleDEO) and isinstance(opt.base, torch.optim.Adam)
    assert (opt.interval, opt.settings()["rotation"]) == (4, "oracle")


def test_run_one_on_the_quadratic_saddle_records_the_exact_curvature():
    record = run_one(QuadraticSaddle(steps=60), "deo-oracle-sgd", seed=0, progress=False)
    assert record.status == "ok" and record.config["optimizer"]["class"] == "OracleDEO"
    # first record: the last probe was at step 0, next to the saddle: Hessian diag(2, -2)
    assert record.deo[0]["curvature"] == pytest.approx(-2.0, abs=1e-6)
    # 60 steps + 6 probes of 1 gradient with graph + 2 products (d = 2: dense Hessian)
    assert record.gradient_evaluations == 60 + 6 * 3
