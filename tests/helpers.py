"""Shared test fixtures: problems whose Hessian is known exactly."""

from __future__ import annotations

import math

import torch

import deo


def quadratic(eigenvalues: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """H = Q diag(eigenvalues) Q^T with a random orthogonal Q (float64); returns (H, Q)."""
    gen = torch.Generator().manual_seed(seed)
    d = eigenvalues.numel()
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return q @ torch.diag(eigenvalues.double()) @ q.T, q


def quadratic_closure(x: torch.Tensor, hessian: torch.Tensor):
    """closure for 0.5 x^T H x in the torch.optim convention (zero_grad, backward, loss)."""

    def closure():
        x.grad = None
        loss = 0.5 * x @ hessian @ x
        loss.backward()
        return loss

    return closure


class MLP(torch.nn.Module):
    """A small net with dropout and BatchNorm: both must look the same to the probe."""

    def __init__(self, dropout: float = 0.3, batchnorm: bool = True, dtype=torch.float32):
        super().__init__()
        self.fc1 = torch.nn.Linear(6, 16, dtype=dtype)
        self.norm = torch.nn.BatchNorm1d(16, dtype=dtype) if batchnorm else torch.nn.Identity()
        self.drop = torch.nn.Dropout(dropout)
        self.fc2 = torch.nn.Linear(16, 1, dtype=dtype)

    def forward(self, x):
        return self.fc2(self.drop(torch.tanh(self.norm(self.fc1(x)))))


def batch(step: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic data for step `step`, independent of the global RNG."""
    gen = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(32, 6, generator=gen, dtype=dtype)
    return x, torch.sin(x.sum(dim=1, keepdim=True))


def make_closure(model, opt, step: int, dtype=torch.float32):
    x, y = batch(step, dtype)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    return closure


def step_task_with_deo(task, steps: int = 4):
    """Drive a bench Task through DEO (ritz, probing every 2 steps) as the runner does."""
    opt = deo.DEO(task.param_groups(), base=torch.optim.SGD, lr=task.lr, interval=2,
                  rotation="ritz", displacement=task.deo_displacement)
    for step in range(steps):
        loss_fn = task.loss_fn(step)

        def closure(loss_fn=loss_fn):
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            return loss

        assert math.isfinite(opt.step(closure).item())
    return opt
