"""The performance options: N kept in bf16 (``direction_dtype``), the compiled cheap step
(``compile_step``), and the in-place rotation, checked against their exact counterparts."""

import shutil

import pytest
import torch

import deo
from deo import dimer
from helpers import MLP, make_closure, quadratic, quadratic_closure


def oja_on_quadratic(direction_dtype, steps=400):
    eigenvalues = torch.linspace(-1.0, 10.0, 50)
    hessian, q = quadratic(eigenvalues)
    x = torch.nn.Parameter(torch.randn(50, dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(1)))
    opt = deo.DEO([x], base=torch.optim.SGD, lr=0.0, alpha=0.0, interval=1, displacement=1e-3,
                  rotation_lr=0.1, direction_dtype=direction_dtype)
    closure = quadratic_closure(x, hessian)
    for _ in range(steps):
        opt.step(closure)
    n = opt.direction[0].double()
    return float((n @ q[:, 0]).abs() / n.norm()), float(opt.curvature), opt


def test_bf16_direction_estimates_the_minimum_curvature_like_a_float_one():
    cos32, curv32, _ = oja_on_quadratic(None)
    cos16, curv16, opt = oja_on_quadratic(torch.bfloat16)
    assert opt.direction[0].dtype == torch.bfloat16
    assert cos32 > 0.999 and curv32 == pytest.approx(-1.0, abs=0.01)
    # bf16 keeps 8 bits of mantissa: N is rounded, the estimate stays within ~1e-2
    assert cos16 > 0.99 and curv16 == pytest.approx(-1.0, abs=0.05)


@pytest.mark.parametrize("rotation", ["oja", "ritz"])
def test_bf16_direction_corrects_the_gradient_along_its_own_n(rotation):
    torch.manual_seed(0)
    model = MLP(batchnorm=False, dropout=0.0)
    opt = deo.DEO(model.parameters(), base=torch.optim.SGD, lr=1e-2, alpha=1.0,
                  rotation=rotation, direction_dtype=torch.bfloat16)
    seen = []
    opt.base.step = lambda closure=None: seen.append([p.grad.clone() for p in opt._params()])
    for step in range(3):
        opt.step(make_closure(model, opt, step))
    assert all(n.dtype == torch.bfloat16 for n in opt.direction)
    n = torch.cat([d.float().reshape(-1) for d in opt.direction])
    g = torch.cat([t.reshape(-1) for t in seen[-1]])
    assert float(n.norm()) == pytest.approx(1.0, abs=1e-2)
    # alpha = 1 makes g orthogonal to N, up to |N|^2 - 1 ~ 1e-4 from N's rounding to bf16
    # (a random unit vector here has |g.N| ~ 0.1 |g|)
    assert abs(float(g @ n)) < 1e-3 * float(g.norm())


def test_bf16_direction_survives_a_checkpoint():
    torch.manual_seed(0)
    model = MLP(batchnorm=False)
    opt = deo.DEO(model.parameters(), lr=1e-2, direction_dtype=torch.bfloat16)
    opt.step(make_closure(model, opt, 0))
    again = deo.DEO(model.parameters(), lr=1e-2, direction_dtype=torch.bfloat16, seed=7)
    again.load_state_dict(opt.state_dict())
    assert all(torch.equal(a, b) and a.dtype == torch.bfloat16
               for a, b in zip(again.direction, opt.direction))
    assert opt.settings()["direction_dtype"] == "bfloat16"


def test_in_place_oja_rotation_equals_the_pure_one():
    gen = torch.Generator().manual_seed(0)
    direction = dimer.normalize([torch.randn(4, 3, generator=gen), torch.randn(5, generator=gen)])
    hvp = [torch.randn(4, 3, generator=gen), torch.randn(5, generator=gen)]
    curv = dimer.curvature(direction, hvp)
    force = [curv * n - h for n, h in zip(direction, hvp)]  # F = -(HN - C N)
    by_definition = dimer.normalize(list(torch._foreach_add(direction, force, alpha=0.3)))
    buffer = [h.clone() for h in hvp]
    in_place = dimer.rotate_oja_(buffer, direction, curv, 0.3)
    assert in_place[0] is buffer[0]
    for b, c in zip(in_place, by_definition):
        torch.testing.assert_close(b, c)


def test_the_oja_probe_keeps_no_state_but_n():
    torch.manual_seed(0)
    model = MLP(batchnorm=False)
    opt = deo.DEO(model.parameters(), lr=1e-2, interval=2)
    for step in range(5):
        opt.step(make_closure(model, opt, step))
    deo_keys = {k for entry in opt.state_dict()["state"].values() for k in entry
                if k.startswith("deo_")}
    assert deo_keys == {"deo_direction"}


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile on the CPU needs a C compiler")
def test_compiled_cheap_step_matches_the_eager_one():
    runs = []
    for compile_step in (False, True):
        torch.manual_seed(0)
        model = MLP(batchnorm=False, dropout=0.0)
        opt = deo.DEO(model.parameters(), lr=1e-2, interval=3, max_grad_norm=1.0,
                      compile_step=compile_step)
        for step in range(7):
            opt.step(make_closure(model, opt, step))
        runs.append([p.detach().clone() for p in model.parameters()])
        if compile_step:
            assert opt._compiled_cheap_step is not None
    for eager, compiled in zip(*runs):
        torch.testing.assert_close(eager, compiled, rtol=1e-5, atol=1e-6)


def test_launch_bound_path_is_only_for_many_small_cuda_tensors():
    from deo.distributed import launch_bound
    assert not launch_bound([torch.zeros(3), torch.zeros(4)])  # CPU: never


@pytest.mark.parametrize("alpha", [1.0, 5.0])
def test_multi_tensor_path_computes_the_same_correction(monkeypatch, alpha):
    """The GPU's launch-bound path (one multi-tensor product, cat, sum; foreach mul + add),
    forced on the CPU, against the per-tensor path."""
    import deo.corrections as corrections
    import deo.distributed as distributed
    gen = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (5,), (3, 2, 4)]
    grads = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    direction = dimer.normalize([torch.randn(s, generator=gen, dtype=torch.float64)
                                 for s in shapes])
    expected = [g.clone() for g in grads]
    expected_projection = corrections.paper_correction_(expected, direction, alpha)
    for module in (distributed, corrections):
        monkeypatch.setattr(module, "launch_bound", lambda tensors: True)
    projection = corrections.paper_correction_(grads, direction, alpha)
    torch.testing.assert_close(projection, expected_projection)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)


def test_gram_matrix_equals_the_pairwise_dot_products():
    from deo.distributed import dot, gram
    gen = torch.Generator().manual_seed(3)
    shapes = [(4, 3), (6,), (2, 5)]
    rows = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(3)]
    cols = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(2)]
    expected = torch.stack([torch.stack([dot(r, c) for c in cols]) for r in rows])
    torch.testing.assert_close(gram(rows, cols), expected)
    assert gram(rows, cols).shape == (3, 2)
