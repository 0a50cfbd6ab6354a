"""deo.bench.saddle: problems with known saddles and minima, and the runner's contract."""

from __future__ import annotations

import json
import math

import pytest
import torch

from deo.bench.saddle import DeepLinear, MatrixSensing, MonkeySaddle, QuadraticSaddle
from helpers import step_task_with_deo

CPU = torch.device("cpu")
TASKS = [QuadraticSaddle, MonkeySaddle, DeepLinear, MatrixSensing]
ids = [cls.name for cls in TASKS]


def ready(cls, seed: int = 0, **kwargs):
    task = cls(**kwargs)
    task.setup(seed, CPU)
    return task


def params_of(task) -> list[torch.Tensor]:
    return [p for group in task.param_groups() for p in group["params"]]


def gradient_norm(task, params) -> float:
    params = [p.detach().clone().requires_grad_() for p in params]
    grads = torch.autograd.grad(task.objective(params), params)
    return math.sqrt(sum(float(g.square().sum()) for g in grads))


def flat_hessian(task, params) -> torch.Tensor:
    shapes = [p.shape for p in params]

    def f(flat):
        pieces = torch.split(flat, [s.numel() for s in shapes])
        return task.objective([piece.view(s) for piece, s in zip(pieces, shapes)])

    return torch.autograd.functional.hessian(f, torch.cat([p.detach().flatten() for p in params]))


def escape_step(task, optimizer_cls) -> tuple[int | None, float]:
    """Drive ``task`` like the runner (zero_grad, loss_fn(step)(), backward, step) until its
    loss falls below the escape threshold; return that step (None: never) and the loss."""
    opt = optimizer_cls(task.param_groups(), lr=task.lr)
    for step in range(task.steps):
        loss_fn = task.loss_fn(step)
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        if loss.item() < task.escape_threshold:
            return step, loss.item()
    return None, loss.item()


@pytest.mark.parametrize("cls", TASKS, ids=ids)
def test_saddle_is_stationary_and_start_is_near_it(cls):
    task = ready(cls)
    saddle = [torch.zeros_like(p) for p in params_of(task)]
    assert gradient_norm(task, saddle) == 0.0
    start = [p.detach() for p in params_of(task)]
    assert task.evaluate()["distance_to_saddle"] == pytest.approx(
        math.sqrt(sum(float(p.square().sum()) for p in start)))
    if cls is QuadraticSaddle:  # starts on the stable manifold: only dy/dt is tiny
        x, y = start
        assert float(x) == 1.0 and 1e-6 <= abs(float(y)) < 2e-6
        assert gradient_norm(task, [torch.zeros_like(x), y]) < 4e-6
    elif cls is MonkeySaddle:  # |grad (r^3 cos 3t)| = 3 r^2; the quartic adds 3 r^3
        r = task.start_radius
        assert abs(gradient_norm(task, start) - 3 * r**2) <= 3 * r**3 + 1e-15
    else:
        assert gradient_norm(task, start) < 0.02


@pytest.mark.parametrize("cls, negative_curvature", [
    (QuadraticSaddle, -2.0), (MonkeySaddle, 0.0), (DeepLinear, 0.0), (MatrixSensing, None)],
    ids=ids)
def test_hessian_at_the_saddle(cls, negative_curvature):
    """Strict saddles have a negative eigenvalue; the monkey and depth-3 saddles are flat."""
    task = ready(cls)
    hessian = flat_hessian(task, [torch.zeros_like(p) for p in params_of(task)])
    eigenvalues = torch.linalg.eigvalsh(hessian)
    if negative_curvature is not None:
        assert float(eigenvalues[0]) == pytest.approx(negative_curvature, abs=1e-12)
    else:  # ~ -4 lambda_1(M*), up to the sensing operator's distortion
        (factor,) = task.minimizer()
        lambda_1 = float(torch.linalg.eigvalsh(factor @ factor.T)[-1])
        assert -1.25 * 4 * lambda_1 < float(eigenvalues[0]) < -0.75 * 4 * lambda_1


@pytest.mark.parametrize("cls", TASKS, ids=ids)
def test_known_minimum_is_attained_at_a_local_minimum(cls):
    task = ready(cls)
    best = task.minimizer()
    assert float(task.objective(best)) == pytest.approx(task.known_minimum, abs=1e-12)
    assert gradient_norm(task, best) < 1e-12
    if cls in (QuadraticSaddle, MonkeySaddle):
        assert float(torch.linalg.eigvalsh(flat_hessian(task, best))[0]) > 1.0


@pytest.mark.parametrize("cls", [QuadraticSaddle, MonkeySaddle], ids=ids[:2])
def test_known_minimum_is_the_global_minimum_on_a_grid(cls):
    task = ready(cls)
    axis = torch.linspace(-3, 3, 1201, dtype=torch.float64)  # step 0.005, contains 0 and +-1
    x, y = torch.meshgrid(axis, axis, indexing="ij")
    values = task.objective([x, y])
    assert float(values.min()) >= task.known_minimum - 1e-12
    assert float(values.min()) == pytest.approx(task.known_minimum, abs=1e-4)


def test_sum_of_squares_tasks_are_nonnegative_far_from_the_minimum():
    for cls in (DeepLinear, MatrixSensing):
        task = ready(cls)
        gen = torch.Generator().manual_seed(1)
        for scale in (0.1, 1.0, 10.0):
            params = [scale * torch.randn(p.shape, generator=gen, dtype=p.dtype)
                      for p in params_of(task)]
            assert float(task.objective(params)) > task.known_minimum


@pytest.mark.parametrize("cls", TASKS, ids=ids)
def test_escape_threshold_lies_between_saddle_and_minimum(cls):
    task = ready(cls)
    saddle_value = float(task.objective([torch.zeros_like(p) for p in params_of(task)]))
    start_value = task.evaluate()["loss"]
    assert task.known_minimum < task.escape_threshold < min(saddle_value, start_value)
    assert task.escape_threshold == pytest.approx((saddle_value + task.known_minimum) / 2)


@pytest.mark.parametrize("cls", TASKS, ids=ids)
@pytest.mark.parametrize("optimizer_cls", [torch.optim.SGD, torch.optim.Adam],
                         ids=["sgd", "adam"])
def test_sgd_and_adam_escape_within_the_step_budget(cls, optimizer_cls):
    task = ready(cls)
    step, loss = escape_step(task, optimizer_cls)
    assert step is not None
    assert step >= 5  # a plateau: no optimizer leaves at once
    if optimizer_cls is torch.optim.SGD:
        assert step >= 50
    assert task.known_minimum <= loss < task.escape_threshold


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sgd_escape_time_matches_linearized_growth_on_saddle_xy(seed):
    """y <- (1 + 2 lr) y near the saddle; f < -1/4 needs |y| > sqrt(1 - 1/sqrt 2)."""
    task = ready(QuadraticSaddle, seed)
    y0 = abs(params_of(task)[1].item())
    predicted = math.log(math.sqrt(1 - 1 / math.sqrt(2)) / y0) / math.log(1 + 2 * task.lr)
    measured, _ = escape_step(task, torch.optim.SGD)
    assert predicted - 1 <= measured <= 1.05 * predicted


@pytest.mark.parametrize("cls", TASKS, ids=ids)
def test_loss_fn_is_deterministic_and_matches_evaluate(cls):
    task = ready(cls)
    first, second = task.loss_fn(3)().item(), task.loss_fn(3)().item()
    assert first == second == task.loss_fn(0)().item() == task.evaluate()["loss"]
    assert all(p.grad is None for p in params_of(task))  # loss_fn must not call backward


@pytest.mark.parametrize("cls", TASKS, ids=ids)
def test_seed_moves_the_start_and_nothing_else(cls):
    a, b, a_again = ready(cls, 0), ready(cls, 1), ready(cls, 0)
    assert all(torch.equal(p, q) for p, q in zip(params_of(a), params_of(a_again)))
    assert not all(torch.equal(p, q) for p, q in zip(params_of(a), params_of(b)))
    assert all(torch.equal(p, q) for p, q in zip(a.minimizer(), b.minimizer()))
    assert all(p.dtype == torch.float64 and p.requires_grad for p in params_of(a))


@pytest.mark.parametrize("cls", [DeepLinear, MatrixSensing], ids=ids[2:])
def test_instance_seed_changes_the_problem(cls):
    a, b = ready(cls), ready(cls, instance_seed=1)
    assert not torch.equal(a.minimizer()[0], b.minimizer()[0])


def test_matrix_sensing_recovers_the_matrix_not_just_the_measurements():
    task = ready(MatrixSensing)
    assert task.evaluate()["recovery_error"] == pytest.approx(1.0, abs=1e-3)
    opt = torch.optim.Adam(task.param_groups(), lr=task.lr)
    for step in range(150):
        opt.zero_grad()
        task.loss_fn(step)().backward()
        opt.step()
    assert task.evaluate()["recovery_error"] < 1e-3


@pytest.mark.parametrize("cls", TASKS, ids=ids)
def test_config_is_plain_json_with_the_settings(cls):
    task = ready(cls)
    config = json.loads(json.dumps(task.config()))
    for key in ("steps", "lr", "eval_every", "escape_threshold", "known_minimum",
                "deo_displacement"):
        assert config[key] == getattr(task, key)
    assert not any(key.startswith("_") for key in config)


@pytest.mark.parametrize("cls, kwargs, argument", [
    (QuadraticSaddle, {"steps": 0}, "steps"),
    (QuadraticSaddle, {"lr": -0.1}, "lr"),
    (QuadraticSaddle, {"y_scale": 0.0}, "y_scale"),
    (QuadraticSaddle, {"x0": float("nan")}, "x0"),
    (MonkeySaddle, {"start_radius": -1e-2}, "start_radius"),
    (MonkeySaddle, {"eval_every": 0}, "eval_every"),
    (DeepLinear, {"width": 0}, "width"),
    (DeepLinear, {"depth": 1}, "depth"),
    (DeepLinear, {"init_scale": 0}, "init_scale"),
    (DeepLinear, {"steps": 2.5}, "steps"),
    (MatrixSensing, {"n": 0}, "n"),
    (MatrixSensing, {"rank": 5, "n": 4}, "rank"),
    (MatrixSensing, {"measurements": 0}, "measurements"),
    (MatrixSensing, {"instance_seed": -1}, "instance_seed"),
])
def test_bad_arguments_raise_value_error_naming_them(cls, kwargs, argument):
    with pytest.raises(ValueError, match=f"^{argument}:"):
        cls(**kwargs)


@pytest.mark.parametrize("cls", TASKS, ids=ids)
def test_deo_steps_through_the_task_contract(cls):
    task = ready(cls)
    start = [p.detach().clone() for p in params_of(task)]
    opt = step_task_with_deo(task)
    assert math.isfinite(task.evaluate()["loss"])
    assert int(opt.stats["extra_gradients"]) >= 2
    assert not all(torch.equal(p, q) for p, q in zip(params_of(task), start))
