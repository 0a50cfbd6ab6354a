"""deo.bench.vision: the digits data, its batches, and the MLP / CNN classifiers."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest
import torch

from deo.bench import vision
from deo.bench.vision import DigitsCNN, DigitsMLP, load_digits_split
from helpers import step_task_with_deo

CPU = torch.device("cpu")
TASKS = [DigitsMLP, DigitsCNN]
ids = [cls.name for cls in TASKS]
needs_sklearn = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None,
                                   reason='needs scikit-learn (pip install "deo[bench]")')


def ready(cls, seed: int = 0, **kwargs):
    task = cls(**kwargs)
    task.setup(seed, CPU)
    return task


def train(task, steps: int) -> None:
    opt = torch.optim.Adam(task.param_groups(), lr=task.lr)
    for step in range(steps):
        loss_fn = task.loss_fn(step)
        opt.zero_grad()
        loss_fn().backward()
        opt.step()


@needs_sklearn
def test_split_is_fixed_80_20_and_scaled_to_unit_range():
    train_x, train_y, test_x, test_y = load_digits_split()
    assert train_x.shape == (1437, 1, 8, 8) and test_x.shape == (360, 1, 8, 8)
    assert train_y.shape == (1437,) and test_y.shape == (360,)
    assert train_x.dtype == torch.float32 and train_y.dtype == torch.long
    for images in (train_x, test_x):
        assert float(images.min()) == 0.0 and float(images.max()) == 1.0
    for labels in (train_y, test_y):
        assert set(labels.tolist()) == set(range(10))
    from sklearn.datasets import load_digits

    digits = load_digits()  # the split is a permutation of the whole set: nothing lost or shared
    everything = torch.cat([train_x, test_x]).flatten(1) * 16
    original = torch.tensor(digits.images, dtype=torch.float32).flatten(1)
    assert torch.equal(torch.sort(everything.sum(1)).values, torch.sort(original.sum(1)).values)
    assert torch.bincount(torch.cat([train_y, test_y])).tolist() == \
        torch.bincount(torch.tensor(digits.target)).tolist()
    load_digits_split.cache_clear()  # the same split when loaded again
    again = load_digits_split()
    assert torch.equal(again[0], train_x) and torch.equal(again[3], test_y)


@needs_sklearn
def test_batches_are_fixed_by_seed_and_step():
    task, same, other_seed = ready(DigitsMLP), ready(DigitsMLP), ready(DigitsMLP, 1)
    for step in range(10):  # without replacement: 64 of 1437 with would repeat w.p. 0.75
        batch = task.batch_indices(step)
        assert batch.shape == (64,) and len(set(batch.tolist())) == 64
        assert 0 <= int(batch.min()) and int(batch.max()) < 1437
    batch = task.batch_indices(7)
    assert torch.equal(batch, task.batch_indices(7))
    assert torch.equal(batch, same.batch_indices(7))
    assert not torch.equal(batch, task.batch_indices(8))
    assert not torch.equal(batch, other_seed.batch_indices(7))
    loss_fn = task.loss_fn(7)
    assert loss_fn().item() == loss_fn().item() == task.loss_fn(7)().item()
    assert task.loss_fn(7)().item() != task.loss_fn(8)().item()
    assert all(p.grad is None for group in task.param_groups() for p in group["params"])


@needs_sklearn
@pytest.mark.parametrize("cls", TASKS, ids=ids)
def test_untrained_model_guesses_uniformly(cls):
    metrics = ready(cls).evaluate()
    assert set(metrics) == {"loss", "accuracy", "train_loss"}
    assert abs(metrics["loss"] - math.log(10)) < 0.15
    assert abs(metrics["train_loss"] - math.log(10)) < 0.15
    assert metrics["accuracy"] < 0.3


@needs_sklearn
def test_adam_trains_the_mlp_to_high_test_accuracy():
    task = ready(DigitsMLP)
    train(task, 200)  # measured: 0.92-0.93 test accuracy over seeds 0-2
    metrics = task.evaluate()
    assert metrics["accuracy"] > 0.85
    assert metrics["loss"] < 0.6 and metrics["train_loss"] < 0.6


@needs_sklearn
def test_adam_trains_the_cnn():
    task = ready(DigitsCNN)
    train(task, 100)  # measured: 0.89-0.91 test accuracy over seeds 0-2
    assert task.evaluate()["accuracy"] > 0.75


@needs_sklearn
def test_cnn_shape_and_parameter_count():
    task = ready(DigitsCNN)
    params = [p for group in task.param_groups() for p in group["params"]]
    assert sum(p.numel() for p in params) == 80 + 1168 + 2570
    assert task.loss_fn(0)().shape == ()


@needs_sklearn
@pytest.mark.parametrize("cls", TASKS, ids=ids)
def test_seed_sets_the_init_and_leaves_the_global_rng_alone(cls):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = ready(cls, 0)
    assert torch.equal(torch.rand(3), expected)
    b, c = ready(cls, 0), ready(cls, 1)
    pa, pb, pc = ([p for g in t.param_groups() for p in g["params"]] for t in (a, b, c))
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    assert not all(torch.equal(x, y) for x, y in zip(pa, pc))


@needs_sklearn
@pytest.mark.parametrize("cls", TASKS, ids=ids)
def test_config_is_plain_json_with_the_settings(cls):
    task = ready(cls, steps=50, batch_size=32)
    config = json.loads(json.dumps(task.config()))
    assert config["steps"] == 50 and config["batch_size"] == 32 and config["lr"] == 1e-3
    assert not any(key.startswith("_") for key in config)


@pytest.mark.parametrize("cls, kwargs, argument", [
    (DigitsMLP, {"hidden": 0}, "hidden"),
    (DigitsMLP, {"activation": "sigmoid"}, "activation"),
    (DigitsMLP, {"steps": 0}, "steps"),
    (DigitsMLP, {"batch_size": -1}, "batch_size"),
    (DigitsMLP, {"lr": 0.0}, "lr"),
    (DigitsCNN, {"channels": 0}, "channels"),
    (DigitsCNN, {"eval_every": 1.5}, "eval_every"),
])
def test_bad_arguments_raise_value_error_naming_them(cls, kwargs, argument):
    with pytest.raises(ValueError, match=f"^{argument}:"):
        cls(**kwargs)


@needs_sklearn
def test_batch_larger_than_the_training_set_is_rejected_at_setup():
    with pytest.raises(ValueError, match="^batch_size:"):
        ready(DigitsMLP, batch_size=2000)


def test_missing_scikit_learn_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn... -> ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    vision.load_digits_split.cache_clear()
    try:
        with pytest.raises(ImportError, match=r'pip install "deo\[bench\]"'):
            DigitsMLP().setup(0, CPU)
    finally:
        vision.load_digits_split.cache_clear()


@needs_sklearn
@pytest.mark.parametrize("cls", TASKS, ids=ids)
def test_deo_steps_through_the_task_contract(cls):
    task = ready(cls)
    opt = step_task_with_deo(task)
    assert int(opt.stats["extra_gradients"]) >= 2
    assert all(math.isfinite(value) for value in task.evaluate().values())


def test_the_slingshot_task_is_full_batch_adam_without_regularisation():
    from deo.bench.optimizers import build_optimizer
    from deo.bench.vision import Slingshot

    task = Slingshot(steps=5, train_size=50, hidden=16, layers=2, eps=1e-6)
    task.setup(0, torch.device("cpu"))
    assert len(task.batch_indices(0)) == len(task.batch_indices(3)) == 50  # every image
    assert sorted(task.batch_indices(1).tolist()) == list(range(50))
    linear = [m for m in task._model if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(64, 16), (16, 16), (16, 10)]
    opt, _ = build_optimizer("adamw", task.param_groups(), lr=task.lr,
                             base_overrides=task.base_overrides)
    group = opt.param_groups[0]
    assert group["weight_decay"] == 0.0 and group["betas"] == (0.9, 0.999)
    assert group["eps"] == 1e-6
    with pytest.raises(ValueError, match="train_size"):
        Slingshot(train_size=10**6).setup(0, torch.device("cpu"))
