"""The wider saddle suite (deo.bench.saddle_problems): each saddle is stationary with the
curvature its docstring states, each minimum is attained, each start is next to its saddle."""

from __future__ import annotations

import math

import pytest
import torch

from deo.bench.runner import run_one
from deo.bench.saddle_problems import (
    AsymmetricMF,
    PhaseRetrieval,
    SymmetricMF,
    TeacherStudent,
    TensorDecomposition,
)
from test_bench_saddle import flat_hessian, gradient_norm, params_of, ready

PROBLEMS = [PhaseRetrieval, SymmetricMF, AsymmetricMF, TensorDecomposition, TeacherStudent]
ids = [cls.name for cls in PROBLEMS]


@pytest.mark.parametrize("cls", PROBLEMS, ids=ids)
def test_the_saddle_is_stationary_strict_and_the_start_next_to_it(cls):
    task = ready(cls)
    saddle = task.saddle()
    assert gradient_norm(task, saddle) < 1e-12
    eigenvalues = torch.linalg.eigvalsh(flat_hessian(task, saddle))
    assert float(eigenvalues[0]) < -0.05  # strict: a direction of negative curvature
    distance = math.sqrt(sum(float((p.detach() - s).square().sum())
                             for p, s in zip(params_of(task), saddle)))
    assert 0 < distance < 3e-3
    assert task.known_minimum < task.escape_threshold < task.saddle_loss


@pytest.mark.parametrize("cls", PROBLEMS, ids=ids)
def test_the_known_minimum_is_attained_where_the_gradient_vanishes(cls):
    task = ready(cls)
    minimizer = task.minimizer()
    assert float(task.objective(minimizer)) == pytest.approx(task.known_minimum, abs=1e-12)
    assert gradient_norm(task, minimizer) < 1e-10


def test_the_closed_forms_of_the_docstrings():
    tensor = ready(TensorDecomposition)
    eigenvalues = torch.linalg.eigvalsh(flat_hessian(tensor, tensor.saddle()))
    t2 = math.sqrt(1 / 8)  # t^2
    assert float(eigenvalues[0]) == pytest.approx(-8 * t2)  # along a_1 - a_2
    assert int((eigenvalues < 0).sum()) == 1  # one way down
    assert tensor.saddle_loss == pytest.approx((4 - 0.25) / 2)
    # symmetric MF: at 0 the Hessian is -M (x) I, with f(0) = 1/4
    mf = ready(SymmetricMF)
    lowest = torch.linalg.eigvalsh(flat_hessian(mf, mf.saddle()))[0]
    assert float(lowest) == pytest.approx(-float(torch.linalg.eigvalsh(mf._target)[-1]))
    assert mf.saddle_loss == pytest.approx(0.25)
    # asymmetric MF: eigenvalues +-sigma_i(M) at (0, 0)
    amf = ready(AsymmetricMF)
    eigenvalues = torch.linalg.eigvalsh(flat_hessian(amf, amf.saddle()))
    sigma = torch.linalg.svdvals(amf._target)[0]
    assert float(eigenvalues[0]) == pytest.approx(-float(sigma))
    assert float(eigenvalues[-1]) == pytest.approx(float(sigma))


@pytest.mark.parametrize("cls", PROBLEMS, ids=ids)
def test_gradient_descent_escapes_and_the_cost_is_counted_to_the_escape(cls):
    task = cls()
    task.stop_on_escape = True
    record = run_one(task, "gd", 0, progress=False)
    assert record.escape_step is not None
    assert record.escape_evaluations == record.escape_step + 1 == len(record.train_loss)


def test_fresh_instances_and_seeds_move_what_they_should():
    a, b = ready(PhaseRetrieval, 0), ready(PhaseRetrieval, 1)
    c = ready(PhaseRetrieval, 0, instance_seed=1)
    assert torch.equal(a._truth, b._truth) and not torch.equal(a._truth, c._truth)
    assert not torch.equal(params_of(a)[0], params_of(b)[0])
