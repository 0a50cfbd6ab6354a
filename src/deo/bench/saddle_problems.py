r"""The wider saddle suite: the standard problems of the saddle-escape literature.

Each starts within about ``start_scale`` (1e-3) of a saddle whose loss and whose minima are
known, like the problems of saddle.py, and counts as escaped at the first step whose loss is
half-way from the saddle's loss to the minimum (``escape_threshold``). ``kind`` labels the
saddle: "strict" where the Hessian there has a negative eigenvalue (a dimer can find it),
"degenerate" where the Hessian is 0 (it cannot: only higher orders curve down).

    phase-retrieval      1/(4m) sum ((a_i^T x)^2 - y_i)^2        strict (a local maximum)
    symmetric-mf         1/4 ||U U^T - M||_F^2                   strict
    asymmetric-mf        1/2 ||U V^T - M||_F^2                   strict (eigenvalues +-sigma)
    tensor-decomposition 1/2 ||sum_i a_i^(x)4 - u^(x)4||^2         strict, between two components
    teacher-student      1/2 mean (v^T tanh(W x) - y)^2, from 0  strict
    deep-linear-L        saddle.DeepLinear with depth L >= 3     degenerate

The instance (sensing vectors, targets, teacher) comes from ``instance_seed``; the run's seed
moves the start only. Full batch, float64. Sources: phase retrieval and matrix factorisation
as in Ge, Lee and Ma 2016 and Jin et al. 2017 (arXiv 1703.00887); orthogonal tensor
decomposition as in Ge, Huang, Jin and Yuan 2015 (arXiv 1503.02101), here unconstrained;
teacher-student networks from small initialisation as in Saxe et al. 2014 and Jacot et al.
2021 (saddle-to-saddle dynamics).
"""

from __future__ import annotations

import math

import torch

from .checks import check_int, check_positive
from .saddle import DTYPE, _FullBatchSaddle


class _SuiteProblem(_FullBatchSaddle):
    """A problem whose saddle loss is computed from its instance, in ``_instance``."""

    kind = "strict"

    def __init__(self, *, steps: int, lr: float, start_scale: float, instance_seed: int,
                 eval_every: int = 10):
        super().__init__(steps, lr, eval_every)
        check_positive("start_scale", start_scale)
        check_int("instance_seed", instance_seed, 0)
        self.start_scale, self.instance_seed = float(start_scale), instance_seed
        self.deo_displacement = None  # DEO's own default: these problems judge it

    def setup(self, seed, device):
        self._device = torch.device(device)
        self._instance(torch.Generator().manual_seed(self.instance_seed))
        saddle = float(self.objective([t.to(self._device) for t in self.saddle()]))
        self.saddle_loss = saddle
        self.escape_threshold = 0.5 * (saddle + self.known_minimum)
        super().setup(seed, device)

    def _start(self, generator):
        return [s + self.start_scale * torch.randn(s.shape, dtype=DTYPE, generator=generator)
                / math.sqrt(s.numel()) for s in self.saddle()]

    def _instance(self, generator: torch.Generator) -> None:
        raise NotImplementedError

    def saddle(self) -> list[torch.Tensor]:
        """The saddle the run starts next to (on the CPU)."""
        return [torch.zeros(shape, dtype=DTYPE) for shape in self._shapes()]

    def _shapes(self) -> list[tuple[int, ...]]:
        raise NotImplementedError


class PhaseRetrieval(_SuiteProblem):
    r"""Recover x* (unit, dimension n) from y_i = (a_i^T x*)^2, a_i Gaussian, i = 1..m:

    f(x) = 1/(4m) sum_i ((a_i^T x)^2 - y_i)^2, minimal (0) at +-x*. At 0 the Hessian is
    -(1/m) sum_i y_i a_i a_i^T ~ -(I + 2 x* x*^T): every direction curves down (a local
    maximum, the strictest saddle). Near x* the Hessian is ~ 2 (I + 2 x* x*^T): gradient
    descent is stable for lr < ~1/3.
    """

    name = "phase-retrieval"

    def __init__(self, *, n: int = 10, measurements: int = 100, steps: int = 500,
                 lr: float = 0.1, start_scale: float = 1e-3, instance_seed: int = 0,
                 eval_every: int = 10):
        super().__init__(steps=steps, lr=lr, start_scale=start_scale,
                         instance_seed=instance_seed, eval_every=eval_every)
        check_int("n", n, 1)
        check_int("measurements", measurements, 1)
        self.n, self.measurements = n, measurements

    def _shapes(self):
        return [(self.n,)]

    def _instance(self, generator):
        truth = torch.randn(self.n, dtype=DTYPE, generator=generator)
        self._truth = (truth / truth.norm()).to(self._device)
        self._sensing = torch.randn(self.measurements, self.n, dtype=DTYPE,
                                    generator=generator).to(self._device)
        self._measured = (self._sensing @ self._truth).square()

    def objective(self, params):
        (x,) = params
        return ((self._sensing @ x).square() - self._measured).square().mean() / 4

    def minimizer(self):
        return [self._truth.clone()]


class SymmetricMF(_SuiteProblem):
    r"""f(U) = 1/4 ||U U^T - M||_F^2, M = X X^T (n x n, rank r, ||M||_F = 1), U n x r.

    0 at U = X Q (Q orthogonal); U = 0 is a strict saddle with Hessian eigenvalues
    -lambda_i(M) (each r times), f(0) = 1/4.
    """

    name = "symmetric-mf"

    def __init__(self, *, n: int = 20, rank: int = 3, steps: int = 500, lr: float = 0.2,
                 start_scale: float = 1e-3, instance_seed: int = 0, eval_every: int = 10):
        super().__init__(steps=steps, lr=lr, start_scale=start_scale,
                         instance_seed=instance_seed, eval_every=eval_every)
        check_int("n", n, 1)
        check_int("rank", rank, 1)
        self.n, self.rank = n, rank

    def _shapes(self):
        return [(self.n, self.rank)]

    def _instance(self, generator):
        factor = torch.randn(self.n, self.rank, dtype=DTYPE, generator=generator)
        factor = factor / (factor @ factor.T).norm().sqrt()
        self._factor = factor.to(self._device)
        self._target = self._factor @ self._factor.T

    def objective(self, params):
        (u,) = params
        return (u @ u.T - self._target).square().sum() / 4

    def minimizer(self):
        return [self._factor.clone()]


class AsymmetricMF(_SuiteProblem):
    r"""f(U, V) = 1/2 ||U V^T - M||_F^2, M = A B^T (rows x cols, rank r, ||M||_F = 1).

    0 at any U V^T = M; (0, 0) is a strict saddle with Hessian eigenvalues +-sigma_i(M),
    f(0, 0) = 1/2.
    """

    name = "asymmetric-mf"

    def __init__(self, *, rows: int = 20, cols: int = 15, rank: int = 3, steps: int = 500,
                 lr: float = 0.2, start_scale: float = 1e-3, instance_seed: int = 0,
                 eval_every: int = 10):
        super().__init__(steps=steps, lr=lr, start_scale=start_scale,
                         instance_seed=instance_seed, eval_every=eval_every)
        for key, value in (("rows", rows), ("cols", cols), ("rank", rank)):
            check_int(key, value, 1)
        self.rows, self.cols, self.rank = rows, cols, rank

    def _shapes(self):
        return [(self.rows, self.rank), (self.cols, self.rank)]

    def _instance(self, generator):
        left = torch.randn(self.rows, self.rank, dtype=DTYPE, generator=generator)
        right = torch.randn(self.cols, self.rank, dtype=DTYPE, generator=generator)
        target = left @ right.T
        scale = target.norm().sqrt()
        self._left, self._right = (left / scale).to(self._device), (right / scale).to(self._device)
        self._target = self._left @ self._right.T

    def objective(self, params):
        u, v = params
        return (u @ v.T - self._target).square().sum() / 2

    def minimizer(self):
        return [self._left.clone(), self._right.clone()]


class TensorDecomposition(_SuiteProblem):
    r"""f(u) = 1/2 ||T - u^(x)4||_F^2 with T = sum_{i<=k} a_i^(x)4, a_i orthonormal in R^d:

    f(u) = 1/2 (k - 2 sum_i (a_i^T u)^4 + |u|^8), minimal at u = +-a_i with f = (k - 1)/2.
    The run starts next to u_s = t (a_1 + a_2), t^4 = 1/8, a critical point between two
    components: along (a_1 - a_2) the Hessian is -8 t^2 = -2.83 (a strict saddle, one
    negative direction), f(u_s) = (k - 1/4)/2. (u = 0 is degenerate: f is quartic there.)
    """

    name = "tensor-decomposition"

    def __init__(self, *, dimension: int = 10, components: int = 4, steps: int = 500,
                 lr: float = 0.05, start_scale: float = 1e-3, instance_seed: int = 0,
                 eval_every: int = 10):
        super().__init__(steps=steps, lr=lr, start_scale=start_scale,
                         instance_seed=instance_seed, eval_every=eval_every)
        check_int("dimension", dimension, 2)
        check_int("components", components, 2)
        if components > dimension:
            raise ValueError(f"components: expected at most dimension = {dimension}, got "
                             f"{components!r}")
        self.dimension, self.components = dimension, components
        self.known_minimum = (components - 1) / 2

    def _shapes(self):
        return [(self.dimension,)]

    def _instance(self, generator):
        gaussian = torch.randn(self.dimension, self.components, dtype=DTYPE,
                               generator=generator)
        self._components = torch.linalg.qr(gaussian).Q.T.contiguous().to(self._device)

    def saddle(self):
        t = (1 / 8) ** 0.25
        return [(t * (self._components[0] + self._components[1])).cpu()]

    def objective(self, params):
        (u,) = params
        overlaps = self._components @ u
        return (self.components - 2 * overlaps.pow(4).sum() + u.square().sum().pow(4)) / 2

    def minimizer(self):
        return [self._components[0].clone()]


class TeacherStudent(_SuiteProblem):
    r"""A two-layer tanh network v^T tanh(W x) fitted to a teacher of the same width, from
    W, v ~ ``start_scale`` (small initialisation):

    f = 1/2 mean_j (v^T tanh(W x_j) - y_j)^2, y_j the teacher's outputs on Gaussian inputs.
    At W = 0, v = 0 the gradient vanishes and the Hessian couples v_i with w_i through
    -E[y x]: eigenvalues +-|E[y x]|, a strict saddle; f(0) = mean y^2 / 2. The teacher is
    realisable, so the minimum is 0.
    """

    name = "teacher-student"

    def __init__(self, *, inputs: int = 10, hidden: int = 4, samples: int = 200,
                 steps: int = 500, lr: float = 0.2, start_scale: float = 1e-3,
                 instance_seed: int = 0, eval_every: int = 10):
        super().__init__(steps=steps, lr=lr, start_scale=start_scale,
                         instance_seed=instance_seed, eval_every=eval_every)
        for key, value in (("inputs", inputs), ("hidden", hidden), ("samples", samples)):
            check_int(key, value, 1)
        self.inputs, self.hidden, self.samples = inputs, hidden, samples

    def _shapes(self):
        return [(self.hidden, self.inputs), (self.hidden,)]

    def _instance(self, generator):
        self._x = torch.randn(self.samples, self.inputs, dtype=DTYPE,
                              generator=generator).to(self._device)
        weights = torch.randn(self.hidden, self.inputs, dtype=DTYPE, generator=generator)
        self._teacher = [(weights / math.sqrt(self.inputs)).to(self._device),
                         torch.randn(self.hidden, dtype=DTYPE, generator=generator
                                     ).to(self._device)]
        self._y = self._net(self._teacher)

    def _net(self, params):
        weights, out = params
        return torch.tanh(self._x @ weights.T) @ out

    def objective(self, params):
        return (self._net(params) - self._y).square().mean() / 2

    def minimizer(self):
        return [t.clone() for t in self._teacher]
