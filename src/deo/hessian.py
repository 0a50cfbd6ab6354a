r"""Exact Hessian information for validating curvature claims (not for training).

An optimizer that claims to follow low-curvature directions (e.g. a dimer estimate of the lowest
eigenvector of :math:`H = \nabla^2 L(\theta)`) can be checked against ground truth here:

* :func:`hessian_vector_product` -- exact :math:`Hv` by double backward, without forming :math:`H`;
* :class:`HessianOperator` -- :math:`v \mapsto Hv` on flat vectors, first-order graph built once;
* :func:`extreme_eigenpairs` -- :math:`\lambda_{\min}, \lambda_{\max}` and their eigenvectors,
  by Lanczos (``scipy.sparse.linalg.eigsh``), or by a dense eigendecomposition for tiny problems;
* :func:`cosine` -- cosine between two parameter-shaped lists of tensors.

Cost: each matvec is one double backward (roughly 2-3x a gradient); Lanczos typically needs tens
to hundreds of them. SciPy is an optional extra: ``pip install "deo[hessian]"``.

``loss_fn`` is a zero-argument callable that *returns* the scalar loss and does not call
``backward()`` (unlike a ``torch.optim`` closure). The Hessian is only well defined if ``loss_fn``
is deterministic: fix the batch and switch off randomness such as dropout.

Example::

    x, y = next(iter(loader))  # one fixed batch
    model.eval()  # no dropout
    loss_fn = lambda: F.cross_entropy(model(x), y)
    eig = extreme_eigenpairs(loss_fn, list(model.parameters()))
    print(eig.lambda_min, cosine(dimer_direction, eig.v_min))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "ExtremeEigenpairs",
    "HessianOperator",
    "cosine",
    "extreme_eigenpairs",
    "hessian_vector_product",
]

LossFn = Callable[[], torch.Tensor]


def _check_params(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    params = list(params)
    if not params:
        raise ValueError("params is empty: pass at least one tensor that requires grad")
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor) or not p.requires_grad:
            raise ValueError(f"params[{i}] must be a tensor with requires_grad=True")
    return params


def _loss_gradients(loss_fn: LossFn, params: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    r""":math:`g = \nabla L(\theta)`, kept differentiable (``create_graph``) for products Hv."""
    if not callable(loss_fn):
        raise TypeError("loss_fn must be a zero-argument callable returning the loss")
    loss = loss_fn()
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"loss_fn must return a scalar tensor (0-d or numel 1), got {shape}")
    if not loss.requires_grad:
        raise ValueError("loss_fn returned a loss that does not depend on params (no grad_fn)")
    # materialize_grads: an unused parameter has zero gradient and zero Hessian rows, not an error.
    return torch.autograd.grad(loss.reshape(()), params, create_graph=True, materialize_grads=True)


def _double_backward(grads, params, vectors, *, retain_graph: bool) -> list[torch.Tensor]:
    r""":math:`Hv = \nabla_\theta (g^\top v)`: one backward pass through the first-order graph."""
    # A gradient that does not require grad is constant in theta (loss linear in that block): its
    # Hessian rows are zero, so it adds nothing to g^T v, and autograd would reject it as an output.
    pairs = [
        (g, v.to(device=g.device, dtype=g.dtype))
        for g, v in zip(grads, vectors, strict=True)
        if g.requires_grad
    ]
    if not pairs:
        return [torch.zeros_like(p) for p in params]
    outputs, grad_outputs = zip(*pairs, strict=True)
    hv = torch.autograd.grad(
        outputs, params, grad_outputs, retain_graph=retain_graph, materialize_grads=True
    )
    return [h.detach() for h in hv]


def hessian_vector_product(loss_fn: LossFn, params, vectors) -> list[torch.Tensor]:
    """Exact :math:`Hv`, ``H`` the Hessian of ``loss_fn()`` w.r.t. ``params``; leaves ``p.grad``."""
    params, vectors = _check_params(params), list(vectors)
    if [v.shape for v in vectors] != [p.shape for p in params]:
        raise ValueError("vectors must be a list of tensors shaped like params")
    grads = _loss_gradients(loss_fn, params)
    return _double_backward(grads, params, vectors, retain_graph=False)


class HessianOperator:
    r""":math:`v \mapsto Hv` on flat vectors of length ``dim`` (parameters concatenated in order).

    ``loss_fn`` is evaluated once and the first-order graph kept, so each :meth:`matvec` costs one
    backward pass through it. The operator holds that graph (and its activations) until deleted.
    """

    def __init__(self, loss_fn: LossFn, params) -> None:
        self.params = _check_params(params)
        self._grads = _loss_gradients(loss_fn, self.params)
        self.dim = sum(p.numel() for p in self.params)
        self.matvec_count = 0

    def matvec(self, v) -> torch.Tensor:
        """Flat :math:`Hv`, computed in the params' dtype; ``v`` may be a torch or numpy vector."""
        hv = _double_backward(self._grads, self.params, self.unflatten(v), retain_graph=True)
        self.matvec_count += 1
        return self.flatten(hv)

    def unflatten(self, flat) -> list[torch.Tensor]:
        """Split a flat vector of length ``dim`` into tensors shaped like (and typed as) params."""
        flat = torch.as_tensor(flat).reshape(-1)
        if flat.numel() != self.dim:
            raise ValueError(f"expected a flat vector of {self.dim} elements, got {flat.numel()}")
        chunks = flat.split([p.numel() for p in self.params])
        return [
            c.to(device=p.device, dtype=p.dtype).view_as(p)
            for c, p in zip(chunks, self.params, strict=True)
        ]

    def flatten(self, tensors) -> torch.Tensor:
        return torch.cat([torch.as_tensor(t).detach().reshape(-1) for t in tensors])


@dataclass
class ExtremeEigenpairs:
    """Both ends of the Hessian spectrum; eigenvectors are unit norm over all params together."""

    lambda_min: float
    lambda_max: float
    v_min: list[torch.Tensor]
    v_max: list[torch.Tensor]
    matvecs: int


def _dense_extremes(op: HessianOperator) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues and eigenvectors from :math:`H` assembled column by column, :math:`He_i`."""
    eye = torch.eye(op.dim, dtype=torch.float64)
    hessian = torch.stack([op.matvec(e).double().cpu() for e in eye], dim=1)
    # Double backward is symmetric only up to rounding; eigh expects exact symmetry.
    eigvals, eigvecs = torch.linalg.eigh(0.5 * (hessian + hessian.T))
    return eigvals[[0, -1]], eigvecs[:, [0, -1]]


def _lanczos_extremes(op: HessianOperator, tol: float, maxiter, seed: int, start):
    try:
        import numpy as np
        from scipy.sparse.linalg import LinearOperator, eigsh
    except ImportError as err:
        raise ImportError(
            'extreme_eigenpairs needs SciPy for Lanczos: pip install "deo[hessian]"'
        ) from err

    def matvec(x):
        flat = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1))
        return op.matvec(flat).to("cpu", torch.float64).numpy()

    linop = LinearOperator((op.dim, op.dim), matvec=matvec, dtype=np.float64)
    v0 = np.random.RandomState(seed).standard_normal(op.dim)
    if start is not None:  # warm start, e.g. from the last checkpoint's eigenvectors
        v0 = op.flatten(start).to("cpu", torch.float64).numpy() + 1e-3 * v0
    # which="BE", k=2: one Krylov space serves both ends of the spectrum; values come ascending.
    eigvals, eigvecs = eigsh(linop, k=2, which="BE", tol=tol, maxiter=maxiter, v0=v0)
    return torch.from_numpy(eigvals), torch.from_numpy(eigvecs)


def _canonical(v: torch.Tensor) -> torch.Tensor:
    # Eigenvectors are defined up to sign; fix it (largest entry positive) for reproducible output.
    v = v / v.norm()
    return v if v[v.abs().argmax()] >= 0 else -v


def extreme_eigenpairs(
    loss_fn: LossFn,
    params,
    *,
    tol: float = 1e-6,
    maxiter: int | None = None,
    seed: int = 0,
    dense_below: int = 64,
    start: list[torch.Tensor] | None = None,
) -> ExtremeEigenpairs:
    r""":math:`(\lambda_{\min}, v_{\min})` and :math:`(\lambda_{\max}, v_{\max})` of :math:`H`.

    Lanczos (ARPACK ``eigsh``, relative accuracy ``tol``, start vector from ``seed``) if
    ``dim > dense_below``, else a dense ``torch.linalg.eigh`` of :math:`H` built from ``dim``
    matvecs. With float32 params the matvecs carry float32 rounding; loosen ``tol`` (~1e-4) or use
    float64 if ARPACK fails to converge. ``start`` (tensors shaped like params) warm-starts
    Lanczos, e.g. with v_min + v_max of a nearby point; a small random part is added.
    """
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol}")
    op = HessianOperator(loss_fn, params)
    # eigsh needs k=2 < dim, so 1- and 2-parameter problems always go dense.
    if op.dim <= max(dense_below, 2):
        eigvals, eigvecs = _dense_extremes(op)
    else:
        eigvals, eigvecs = _lanczos_extremes(op, tol, maxiter, seed, start)
    return ExtremeEigenpairs(
        lambda_min=float(eigvals[0]),
        lambda_max=float(eigvals[1]),
        v_min=op.unflatten(_canonical(eigvecs[:, 0])),
        v_max=op.unflatten(_canonical(eigvecs[:, 1])),
        matvecs=op.matvec_count,
    )


def cosine(xs, ys) -> float:
    r""":math:`\langle x, y\rangle / (\|x\|\|y\|)` with each list viewed as one vector (signed)."""
    x = torch.cat([t.detach().reshape(-1).to("cpu", torch.float64) for t in xs])
    y = torch.cat([t.detach().reshape(-1).to("cpu", torch.float64) for t in ys])
    if x.numel() != y.numel():
        raise ValueError(f"xs and ys differ in total size: {x.numel()} vs {y.numel()}")
    norms = x.norm() * y.norm()
    if norms == 0:
        raise ValueError("cosine is undefined for a zero vector")
    return float(x @ y / norms)
