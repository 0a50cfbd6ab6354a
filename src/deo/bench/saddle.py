r"""The saddle suite: small deterministic problems whose saddle and minima are known exactly.

Each task starts next to a saddle point, where the gradient is tiny, and records how many
steps an optimizer needs to get away from it: the runner's ``escape_step`` is the first step
whose loss falls below ``escape_threshold``, set half-way between the loss at the saddle and
the known minimum ``known_minimum``. All are full batch, float64, and ``loss_fn(step)``
ignores ``step``.

    saddle-xy        f = x^2 - y^2 + y^4/2            strict saddle (Hessian diag(2, -2))
    monkey-saddle    f = x^3 - 3xy^2 + 3/4 (x^2+y^2)^2  degenerate saddle (Hessian 0)
    deep-linear      ||W_L ... W_1 - A||_F^2           saddle of order L at W = 0
    matrix-sensing   mean (<A_i, UU^T> - y_i)^2         strict saddle at U = 0

The problem instance (target matrix, measurements) is drawn from ``instance_seed`` and is the
same for every run; the run's ``seed`` only moves the starting point. ``minimizer()`` returns
parameters at which the loss equals ``known_minimum``, for tests and reports.
``objective(params)`` evaluates the loss anywhere (grids, Hessians) without touching the run.
``deo_displacement`` is 1e-3: the default (10 x lr) would probe far outside the region where
the Hessian at the start is a good model (0.2 to 2 against a start within 0.15 of the saddle).

Escape steps quoted in the docstrings are for plain gradient descent (torch.optim.SGD without
momentum) and torch.optim.Adam with its defaults, at each task's default lr. The runner's
"sgd" has momentum 0.9 and leaves 2-5x sooner (saddle-xy ~50, monkey-saddle 50-75,
deep-linear 50-60, matrix-sensing 25-35 steps over seeds 0-2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .checks import check_int, check_positive
from .task import Task

DTYPE = torch.float64


class _FullBatchSaddle(Task):
    """A deterministic objective of a few float64 tensors; subclasses define the math."""

    known_minimum: float = 0.0

    def __init__(self, steps: int, lr: float, eval_every: int):
        check_int("steps", steps, 1)
        check_positive("lr", lr)
        check_int("eval_every", eval_every, 1)
        self.steps, self.lr, self.eval_every = steps, float(lr), eval_every
        self.deo_displacement = 1e-3

    def setup(self, seed: int, device: torch.device) -> None:
        self._device = torch.device(device)
        start = self._start(torch.Generator().manual_seed(seed))
        self._params = [p.to(self._device).requires_grad_() for p in start]

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": self._params}]

    def loss_fn(self, step: int) -> Callable[[], torch.Tensor]:
        return self._loss

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        return {"loss": float(self._loss()), **self._metrics()}

    def objective(self, params: list[torch.Tensor]) -> torch.Tensor:
        """The loss at ``params`` (shaped like ``param_groups``; extra leading dims broadcast
        for the 2-D problems, so a grid evaluates in one call)."""
        raise NotImplementedError

    def minimizer(self) -> list[torch.Tensor]:
        """Parameters (same order as ``param_groups``) where the loss is ``known_minimum``."""
        raise NotImplementedError

    def _start(self, generator: torch.Generator) -> list[torch.Tensor]:
        raise NotImplementedError

    def _loss(self) -> torch.Tensor:
        return self.objective(self._params)

    def _metrics(self) -> dict[str, float]:
        return {"distance_to_saddle": math.sqrt(sum(float(p.square().sum())
                                                    for p in self._params))}


class QuadraticSaddle(_FullBatchSaddle):
    r"""f(x, y) = x^2 - y^2 + y^4 / 2: the textbook strict saddle, bounded below.

    grad f = (2x, -2y + 2y^3), Hessian at 0 = diag(2, -2). Minima (0, +-1) with f = -1/2;
    ``escape_threshold`` = -1/4 needs |y| > (1 - 1/sqrt 2)^(1/2) = 0.541. The start
    (x0, y0) = (1, +-y_scale u), u ~ U[1, 2) and a random sign from ``seed``, lies on the
    saddle's stable manifold up to y0: near the saddle gradient descent maps
    x <- (1 - 2 lr) x and y <- (1 + 2 lr) y, so it first slides down to the saddle and
    then needs about log(0.541 / |y0|) / log(1 + 2 lr) steps to leave it (about 135 for the
    defaults lr = 0.05, |y0| ~ 1.5e-6). Adam's normalized steps leave in about 15.
    """

    name = "saddle-xy"

    def __init__(self, *, steps: int = 300, lr: float = 0.05, x0: float = 1.0,
                 y_scale: float = 1e-6, eval_every: int = 10):
        super().__init__(steps, lr, eval_every)
        if isinstance(x0, bool) or not isinstance(x0, (int, float)) or not math.isfinite(x0):
            raise ValueError(f"x0: expected a finite number, got {x0!r}")
        check_positive("y_scale", y_scale)
        self.x0, self.y_scale = float(x0), float(y_scale)
        self.known_minimum = -0.5
        self.escape_threshold = -0.25

    def _start(self, generator):
        u, sign = torch.rand(2, generator=generator, dtype=DTYPE)
        y0 = self.y_scale * (1 + u) * (1.0 if sign < 0.5 else -1.0)
        return [torch.tensor(self.x0, dtype=DTYPE), y0]

    def objective(self, params):
        x, y = params
        return x**2 - y**2 + y**4 / 2

    def minimizer(self):
        return [torch.tensor(0.0, dtype=DTYPE), torch.tensor(1.0, dtype=DTYPE)]


class MonkeySaddle(_FullBatchSaddle):
    r"""f(x, y) = x^3 - 3xy^2 + 3/4 (x^2 + y^2)^2 = r^3 cos(3 theta) + 3/4 r^4.

    The monkey saddle x^3 - 3xy^2 (three valleys, three ridges) is degenerate: gradient AND
    Hessian vanish at 0; at radius r the Hessian 6r [[cos, -sin], [-sin, -cos]](theta) has
    eigenvalues +-6r. The quartic keeps it bounded below without touching the saddle.
    Minimizing over theta (cos 3 theta = -1) leaves -r^3 + 3/4 r^4, minimal at r = 1, so the
    minima are the points at radius 1 and angle pi/3, pi, 5 pi/3 with
    f = -1/4 = ``known_minimum`` (Hessian diag(3, 9) at (-1, 0): gradient descent is stable
    for lr < 2/9). ``escape_threshold`` = -1/8 is reached at r ~ 0.62 along a valley.

    The start is ``start_radius`` at a random angle from ``seed``. Along a valley gradient
    descent grows r <- r + 3 lr r^2, so it leaves after about 1 / (3 lr r0) steps, a time
    that grows like 1 / r0 rather than log(1 / r0) as at a strict saddle: r0 = 1e-3 would
    take about 3000 steps, hence the default r0 = 2e-2. How long SGD takes depends on how
    far from a valley the start angle is (near a ridge it first has to turn): over uniform
    angles, lr 0.1, the median is 216 steps, 90% leave within 450 and 98.6% within the
    default 1000 steps; Adam leaves in about 10.
    """

    name = "monkey-saddle"

    def __init__(self, *, steps: int = 1000, lr: float = 0.1, start_radius: float = 2e-2,
                 eval_every: int = 10):
        super().__init__(steps, lr, eval_every)
        check_positive("start_radius", start_radius)
        self.start_radius = float(start_radius)
        self.known_minimum = -0.25
        self.escape_threshold = -0.125

    def _start(self, generator):
        angle = 2 * math.pi * torch.rand((), generator=generator, dtype=DTYPE)
        return [self.start_radius * torch.cos(angle), self.start_radius * torch.sin(angle)]

    def objective(self, params):
        x, y = params
        return x**3 - 3 * x * y**2 + 0.75 * (x**2 + y**2) ** 2

    def minimizer(self):
        return [torch.tensor(-1.0, dtype=DTYPE), torch.tensor(0.0, dtype=DTYPE)]


class DeepLinear(_FullBatchSaddle):
    r"""A deep linear network W_L ... W_1 (``depth`` L, square ``width`` d) fitting A.

    loss = ||W_L ... W_1 - A||_F^2 with A a Gaussian d x d matrix from ``instance_seed``
    scaled to ||A||_F = 1, so the loss is the relative squared error: 1 at W = 0 and
    ``known_minimum`` = 0 at W_1 = A, W_2 = ... = W_L = I. W = 0 is a saddle where all
    derivatives of order below L vanish (L = 2: a strict saddle; L >= 3: higher order, the
    Hessian is 0 too). From a small start W_i ~ N(0, init_scale^2) each singular mode s of A
    grows like u' ~ lr s u^(L-1), which takes ~ 1 / (lr s init_scale) steps for L = 3: the
    plateau, then a fall as the modes are learned one by one. ``escape_threshold`` = 0.5,
    half the initial loss. Defaults (d 8, L 3, init 1e-2, lr 0.2): SGD leaves in about 250
    steps, Adam in about 10. Stable: SGD converges at lr 0.3 too (not at 1.0 or more).
    """

    name = "deep-linear"

    def __init__(self, *, width: int = 8, depth: int = 3, init_scale: float = 1e-2,
                 steps: int = 400, lr: float = 0.2, instance_seed: int = 0,
                 eval_every: int = 10):
        super().__init__(steps, lr, eval_every)
        check_int("width", width, 1)
        check_int("depth", depth, 2)
        check_positive("init_scale", init_scale)
        check_int("instance_seed", instance_seed, 0)
        self.width, self.depth, self.init_scale = width, depth, float(init_scale)
        self.instance_seed = instance_seed
        self.known_minimum = 0.0
        self.escape_threshold = 0.5

    def _start(self, generator):
        target = torch.randn(self.width, self.width, dtype=DTYPE,
                             generator=torch.Generator().manual_seed(self.instance_seed))
        self._target = (target / target.norm()).to(self._device)
        return [self.init_scale * torch.randn(self.width, self.width, dtype=DTYPE,
                                              generator=generator) for _ in range(self.depth)]

    def objective(self, params):
        product = params[0]
        for weight in params[1:]:
            product = weight @ product
        return (product - self._target).square().sum()

    def minimizer(self):
        eye = torch.eye(self.width, dtype=DTYPE, device=self._device)
        return [self._target.clone(), *(eye.clone() for _ in range(self.depth - 1))]


class MatrixSensing(_FullBatchSaddle):
    r"""Recover a rank-r PSD matrix M* = X X^T (n x n) from m linear measurements as U U^T.

    y_k = <A_k, M*> with Gaussian A_k (n x n), k = 1..m, all from ``instance_seed``;
    ||M*||_F = 1. loss(U) = mean_k (<A_k, U U^T> - y_k)^2 / mean_k y_k^2 over U (n x r),
    1 at U = 0 and ``known_minimum`` = 0 at U = X (and every U = X Q, Q orthogonal).
    U = 0 is a strict saddle: there the loss is ~ ||U U^T - M*||^2 / ||M*||^2 whose Hessian is
    -4 M* (x) I, so gradient descent grows U along the top eigenvectors of M* by
    ~ (1 + 4 lr lambda_1(M*)) per step from the start U ~ N(0, init_scale^2): a plateau of
    log(1 / init_scale) / (4 lr lambda_1) steps (about 90 for the defaults). The default
    m = 200 = 5 n r measurements determine M* (U U^T has n r - r (r - 1) / 2 = 39 degrees of
    freedom); the ``recovery_error`` ||U U^T - M*||_F / ||M*||_F tells a recovery from a fit.
    ``escape_threshold`` = 0.5, half the initial loss.
    """

    name = "matrix-sensing"

    def __init__(self, *, n: int = 20, rank: int = 2, measurements: int = 200,
                 init_scale: float = 1e-3, steps: int = 300, lr: float = 0.02,
                 instance_seed: int = 0, eval_every: int = 10):
        super().__init__(steps, lr, eval_every)
        check_int("n", n, 1)
        check_int("rank", rank, 1)
        if rank > n:
            raise ValueError(f"rank: expected an integer <= n = {n}, got {rank!r}")
        check_int("measurements", measurements, 1)
        check_positive("init_scale", init_scale)
        check_int("instance_seed", instance_seed, 0)
        self.n, self.rank, self.measurements = n, rank, measurements
        self.init_scale, self.instance_seed = float(init_scale), instance_seed
        self.known_minimum = 0.0
        self.escape_threshold = 0.5

    def _start(self, generator):
        instance = torch.Generator().manual_seed(self.instance_seed)
        factor = torch.randn(self.n, self.rank, dtype=DTYPE, generator=instance)
        factor = factor / (factor @ factor.T).norm().sqrt()  # ||X X^T||_F = 1
        sensing = torch.randn(self.measurements, self.n * self.n, dtype=DTYPE,
                              generator=instance)
        self._factor = factor.to(self._device)
        self._sensing = sensing.to(self._device)  # row k: A_k flattened
        self._measured = self._sensing @ (self._factor @ self._factor.T).flatten()
        self._measured_power = self._measured.square().mean()
        return [self.init_scale * torch.randn(self.n, self.rank, dtype=DTYPE,
                                              generator=generator)]

    def objective(self, params):
        (u,) = params
        residual = self._sensing @ (u @ u.T).flatten() - self._measured
        return residual.square().mean() / self._measured_power

    def _metrics(self):
        (u,) = self._params
        target = self._factor @ self._factor.T
        return {"recovery_error": float((u @ u.T - target).norm() / target.norm()),
                **super()._metrics()}

    def minimizer(self):
        return [self._factor.clone()]
