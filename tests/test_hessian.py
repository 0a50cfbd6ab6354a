"""Ground-truth checks for deo.hessian: quadratics with known spectra and a dense MLP Hessian."""

import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from deo import hessian


def _random_symmetric(d, seed):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(d, d, generator=g, dtype=torch.float64)
    return 0.5 * (m + m.T)


def _matrix_with_spectrum(eigenvalues, seed):
    """A = Q diag(eigenvalues) Q^T with Q a random orthogonal basis; returns (A, Q)."""
    g = torch.Generator().manual_seed(seed)
    d = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q @ torch.diag(eigenvalues) @ q.T, q


def _quadratic(a, shapes=None):
    """loss(theta) = 0.5 theta^T A theta, theta split over params of the given shapes (H = A)."""
    d = a.shape[0]
    shapes = shapes or [(d,)]
    g = torch.Generator().manual_seed(1)
    params = [torch.randn(s, generator=g, dtype=a.dtype).requires_grad_() for s in shapes]

    def loss_fn():
        theta = torch.cat([p.reshape(-1) for p in params])
        return 0.5 * theta @ a @ theta

    return loss_fn, params


def _flat(tensors):
    return torch.cat([t.reshape(-1).double() for t in tensors])


def _assert_eigenpairs_match(result, eigvals, eigvecs, *, rel=1e-6, min_cos=0.999):
    """Compare with ground truth; eigvecs columns 0 and -1 belong to eigvals[0], eigvals[-1]."""
    scale = float(eigvals.abs().max())
    assert abs(result.lambda_min - float(eigvals[0])) <= rel * scale
    assert abs(result.lambda_max - float(eigvals[-1])) <= rel * scale
    assert abs(hessian.cosine(result.v_min, [eigvecs[:, 0]])) > min_cos
    assert abs(hessian.cosine(result.v_max, [eigvecs[:, -1]])) > min_cos
    for v in (result.v_min, result.v_max):
        assert _flat(v).norm().item() == pytest.approx(1.0, abs=1e-6)


def test_hvp_of_quadratic_is_matrix_times_vector():
    a = _random_symmetric(30, seed=0)
    loss_fn, params = _quadratic(a, shapes=[(5, 4), (10,)])
    v = [torch.randn_like(p) for p in params]

    hv = hessian.hessian_vector_product(loss_fn, params, v)

    assert [h.shape for h in hv] == [p.shape for p in params]
    torch.testing.assert_close(_flat(hv), a @ _flat(v), rtol=1e-12, atol=1e-12)


def test_hvp_handles_params_entering_linearly_or_not_at_all():
    # Gradients constant in theta (linear term) or absent (unused param) have zero Hessian rows.
    a = _random_symmetric(6, seed=2)
    x = torch.randn(6, dtype=torch.float64, requires_grad=True)
    linear = torch.randn(3, dtype=torch.float64, requires_grad=True)
    unused = torch.randn(2, dtype=torch.float64, requires_grad=True)
    params = [x, linear, unused]
    v = [torch.randn_like(p) for p in params]

    hv = hessian.hessian_vector_product(lambda: 0.5 * x @ a @ x + linear.sum(), params, v)

    torch.testing.assert_close(hv[0], a @ v[0])
    assert torch.equal(hv[1], torch.zeros(3, dtype=torch.float64))
    assert torch.equal(hv[2], torch.zeros(2, dtype=torch.float64))


def test_lanczos_recovers_known_spectrum():
    pytest.importorskip("scipy")
    eigvals = torch.linspace(-1.0, 10.0, 200, dtype=torch.float64)
    a, q = _matrix_with_spectrum(eigvals, seed=3)
    loss_fn, params = _quadratic(a, shapes=[(10, 10), (100,)])

    result = hessian.extreme_eigenpairs(loss_fn, params)

    _assert_eigenpairs_match(result, eigvals, q)
    assert [v.shape for v in result.v_min] == [p.shape for p in params]
    assert 0 < result.matvecs < 200  # Lanczos, not the dense path's one matvec per dimension


def test_dense_path_matches_numpy_and_needs_no_scipy(monkeypatch):
    a = _random_symmetric(20, seed=4)
    loss_fn, params = _quadratic(a)
    # A None entry makes any import of it fail: proves the dense path never reaches for SciPy.
    monkeypatch.setitem(sys.modules, "scipy.sparse.linalg", None)

    result = hessian.extreme_eigenpairs(loss_fn, params)

    eigvals, eigvecs = np.linalg.eigh(a.numpy())
    _assert_eigenpairs_match(
        result, torch.from_numpy(eigvals), torch.from_numpy(eigvecs), rel=1e-12, min_cos=1 - 1e-10
    )
    assert result.matvecs == 20


def test_lanczos_without_scipy_says_how_to_install(monkeypatch):
    loss_fn, params = _quadratic(_random_symmetric(20, seed=5))
    monkeypatch.setitem(sys.modules, "scipy.sparse.linalg", None)
    with pytest.raises(ImportError, match=r'pip install "deo\[hessian\]"'):
        hessian.extreme_eigenpairs(loss_fn, params, dense_below=0)


def _mlp_problem(dtype):
    """2-layer tanh MLP (4 -> 16 -> 3, 131 params), fixed batch, MSE; plus its dense Hessian."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x, y = torch.randn(32, 4, dtype=torch.float64), torch.randn(32, 3, dtype=torch.float64)
    names, params = zip(*model.named_parameters(), strict=True)

    def loss_of_flat(theta):
        chunks = theta.split([p.numel() for p in params])
        weights = {n: c.view_as(p) for n, c, p in zip(names, chunks, params, strict=True)}
        return nn.functional.mse_loss(functional_call(model, weights, (x,)), y)

    theta = torch.cat([p.detach().reshape(-1) for p in params])
    dense = torch.autograd.functional.hessian(loss_of_flat, theta)
    model, x, y = model.to(dtype), x.to(dtype), y.to(dtype)
    return (lambda: nn.functional.mse_loss(model(x), y)), list(model.parameters()), dense


@pytest.mark.parametrize("dense_below", [0, None, 10_000], ids=["lanczos", "default", "dense"])
def test_mlp_matches_dense_autograd_hessian(dense_below):
    if dense_below != 10_000:
        pytest.importorskip("scipy")
    loss_fn, params, dense = _mlp_problem(torch.float64)
    eigvals, eigvecs = torch.linalg.eigh(dense)
    # Eigenvectors are only comparable if the extreme eigenvalues are isolated.
    assert min(eigvals[1] - eigvals[0], eigvals[-1] - eigvals[-2]) > 1e-2

    kwargs = {} if dense_below is None else {"dense_below": dense_below}
    result = hessian.extreme_eigenpairs(loss_fn, params, **kwargs)

    _assert_eigenpairs_match(result, eigvals, eigvecs)
    assert eigvals[0] < 0  # a saddle: the case a negative-curvature method must get right


def test_float32_params_give_float32_eigenvectors_close_to_float64_truth():
    pytest.importorskip("scipy")
    loss_fn, params, dense = _mlp_problem(torch.float32)
    eigvals, eigvecs = torch.linalg.eigh(dense)

    result = hessian.extreme_eigenpairs(loss_fn, params, tol=1e-4, dense_below=0)

    _assert_eigenpairs_match(result, eigvals, eigvecs, rel=1e-4, min_cos=0.99)
    assert all(v.dtype == torch.float32 for v in result.v_min + result.v_max)


def test_operator_counts_matvecs_and_round_trips_flat_vectors():
    a = _random_symmetric(12, seed=6)
    loss_fn, params = _quadratic(a, shapes=[(3, 2), (6,)])
    op = hessian.HessianOperator(loss_fn, params)
    assert (op.dim, op.matvec_count) == (12, 0)

    for seed in range(3):
        v = np.random.RandomState(seed).standard_normal(12)  # numpy in, as scipy hands it over
        np.testing.assert_allclose(op.matvec(v).numpy(), a.numpy() @ v, rtol=1e-12)
    assert op.matvec_count == 3

    flat = torch.arange(12, dtype=torch.float64)
    parts = op.unflatten(flat)
    assert [t.shape for t in parts] == [p.shape for p in params]
    assert torch.equal(op.flatten(parts), flat)


def test_hvp_leaves_param_grads_untouched():
    loss_fn, params = _quadratic(_random_symmetric(8, seed=7), shapes=[(4,), (4,)])
    sentinel = torch.full((4,), 7.0, dtype=torch.float64)
    params[0].grad = sentinel

    hessian.hessian_vector_product(loss_fn, params, [torch.ones(4), torch.ones(4)])

    assert params[0].grad is sentinel and torch.equal(sentinel, torch.full_like(sentinel, 7.0))
    assert params[1].grad is None


def test_cosine_is_signed_and_spans_all_tensors():
    xs = [torch.tensor([1.0, 0.0]), torch.tensor([1.0])]
    assert hessian.cosine(xs, [-t for t in xs]) == pytest.approx(-1.0)
    assert hessian.cosine(xs, [torch.tensor([1.0, 0.0]), torch.tensor([-1.0])]) == pytest.approx(0)
    with pytest.raises(ValueError, match="zero vector"):
        hessian.cosine(xs, [torch.zeros(3)])


def test_errors_name_the_offending_argument():
    loss_fn, params = _quadratic(_random_symmetric(4, seed=8))
    with pytest.raises(ValueError, match="params"):
        hessian.extreme_eigenpairs(loss_fn, [])
    with pytest.raises(ValueError, match="params"):
        hessian.hessian_vector_product(loss_fn, [], [])
    with pytest.raises(ValueError, match="params"):
        hessian.HessianOperator(loss_fn, [torch.zeros(3)])  # does not require grad
    with pytest.raises(ValueError, match="scalar"):
        hessian.extreme_eigenpairs(lambda: params[0] ** 2, params)
    with pytest.raises(ValueError, match="scalar"):
        hessian.hessian_vector_product(lambda: params[0] ** 2, params, [torch.ones(4)])
    for tol in (0.0, -1e-6):
        with pytest.raises(ValueError, match="tol"):
            hessian.extreme_eigenpairs(loss_fn, params, tol=tol)
    with pytest.raises(ValueError, match="vectors"):
        hessian.hessian_vector_product(loss_fn, params, [torch.ones(5)])
    # A one-element loss of shape (1,) is a scalar too.
    hv = hessian.hessian_vector_product(lambda: loss_fn().reshape(1), params, [torch.ones(4)])
    assert hv[0].shape == (4,)


def test_warm_start_from_the_answer_needs_fewer_products():
    pytest.importorskip("scipy")
    from deo import hessian as H

    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(300, 300, generator=gen, dtype=torch.float64))
    a = q @ torch.diag(torch.linspace(-1.0, 10.0, 300, dtype=torch.float64)) @ q.T
    x = torch.zeros(300, dtype=torch.float64, requires_grad=True)

    def loss_fn():
        return 0.5 * (x @ a @ x) + x.sum()

    cold = H.extreme_eigenpairs(loss_fn, [x])
    warm = H.extreme_eigenpairs(loss_fn, [x], start=[cold.v_min[0] + cold.v_max[0]])
    assert warm.lambda_min == pytest.approx(-1.0, rel=1e-6)
    assert warm.matvecs < cold.matvecs
