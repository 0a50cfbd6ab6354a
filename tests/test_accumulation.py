"""Gradient accumulation: one closure over all micro-batches equals one large batch."""

import pytest
import torch

import deo
from helpers import MLP, batch

MICRO = 4  # micro-batches per step; helpers.batch gives 32 rows, so 4 of 8


def accumulating_closure(model, opt, micro_batches):
    """The README's pattern: zero once, backward (loss_i / k) for every micro-batch."""

    def closure():
        opt.zero_grad()
        total = 0.0
        for x, y in micro_batches:
            loss = torch.nn.functional.mse_loss(model(x), y) / len(micro_batches)
            loss.backward()
            total += loss.detach()
        return total

    return closure


def train(micro, rotation, steps=7):
    # no dropout, no BatchNorm: with them k micro-batches are not one batch to begin with.
    # float64: in float32 the summation order alone moved the Ritz direction by 6e-6 on one
    # CPU and not on another; in float64 the check can stay tight on every machine.
    torch.manual_seed(0)
    model = MLP(dropout=0.0, batchnorm=False).double()
    opt = deo.DEO(model.parameters(), base=torch.optim.AdamW, lr=1e-2, interval=3,
                  rotation=rotation, rotation_lr=0.05, displacement=1e-2, max_grad_norm=1.0)
    losses = []
    for step in range(steps):  # probes at 0, 3, 6
        x, y = (t.double() for t in batch(step))
        micro_batches = list(zip(x.chunk(micro), y.chunk(micro)))
        losses.append(opt.step(accumulating_closure(model, opt, micro_batches)))
    return model, opt, torch.stack(losses)


@pytest.mark.parametrize("rotation", ["oja", "ritz"])
def test_accumulation_over_micro_batches_equals_one_large_batch(rotation):
    large, large_opt, large_losses = train(1, rotation)
    accumulated, opt, losses = train(MICRO, rotation)

    assert opt.steps == large_opt.steps == 7
    assert int(opt.stats["extra_gradients"]) == int(large_opt.stats["extra_gradients"]) > 0
    tol = {"rtol": 1e-9, "atol": 1e-11}
    torch.testing.assert_close(losses, large_losses, **tol)
    torch.testing.assert_close(opt.curvature, large_opt.curvature, **tol)
    for a, b in zip(opt.direction, large_opt.direction):
        torch.testing.assert_close(a, b, **tol)
    for a, b in zip(accumulated.parameters(), large.parameters()):
        torch.testing.assert_close(a, b, **tol)


def test_a_closure_over_the_last_micro_batch_only_gets_another_curvature():
    # What a training loop that accumulates outside the closure hands DEO on a probe step:
    # .grad holds all micro-batches, the closure (the displaced pass) only the last one.
    def curvature(last_only):
        torch.manual_seed(0)
        model = MLP(dropout=0.0, batchnorm=False)
        opt = deo.DEO(model.parameters(), base=torch.optim.SGD, lr=0.0, displacement=1e-2)
        x, y = batch(0)
        micro_batches = list(zip(x.chunk(MICRO), y.chunk(MICRO)))
        if last_only:
            accumulating_closure(model, opt, micro_batches)()
            calls = []

            def closure():  # the first call must not wipe the accumulated gradients
                calls.append(None)
                if len(calls) > 1:  # the displaced pass: (loss_k / k).backward() alone
                    opt.zero_grad()
                    loss = torch.nn.functional.mse_loss(model(x[-8:]), y[-8:]) / MICRO
                    loss.backward()
                    return loss
        else:
            closure = accumulating_closure(model, opt, micro_batches)
        opt.step(closure)
        return float(opt.curvature)

    right, wrong = curvature(last_only=False), curvature(last_only=True)
    assert abs(wrong - right) > 10 * abs(right)  # here +0.031 against -6.66
