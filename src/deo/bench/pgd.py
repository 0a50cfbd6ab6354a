"""Perturbed gradient descent (Jin, Ge, Netrapalli, Kakade, Jordan 2017), the classic
saddle-escape baseline. No maintained PyTorch package ships it, so it lives here (~40 lines).

    theta <- theta - lr g                                   every step
    if |g| <= grad_threshold and the last perturbation is >= wait steps old:
        theta <- theta + xi,  xi uniform in the ball of radius ``radius``

The ball is over ALL parameters together, like DEO's N.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer


class PerturbedGD(Optimizer):
    def __init__(self, params, lr: float = 1e-2, grad_threshold: float = 1e-3,
                 radius: float = 1e-2, wait: int = 10, seed: int = 0, weight_decay: float = 0.0):
        for name, value in (("lr", lr), ("grad_threshold", grad_threshold), ("radius", radius)):
            if not value > 0:
                raise ValueError(f"{name}: expected a float > 0, got {value!r}")
        if not (isinstance(wait, int) and wait >= 1):
            raise ValueError(f"wait: expected an integer >= 1, got {wait!r}")
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})
        self.grad_threshold, self.radius, self.wait = grad_threshold, radius, wait
        self.generator = torch.Generator().manual_seed(seed)
        self.steps, self.last_perturbation, self.perturbations = 0, -wait, 0

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad + group["weight_decay"] * p, alpha=-group["lr"])
        if self.steps - self.last_perturbation >= self.wait and grad_norm <= self.grad_threshold:
            self._perturb(params)
        self.steps += 1
        return loss

    def _perturb(self, params) -> None:
        noise = [torch.randn(p.shape, generator=self.generator, dtype=torch.float64)
                 for p in params]
        total = sum(p.numel() for p in params)
        size = torch.sqrt(sum((n * n).sum() for n in noise))
        # uniform in the ball: a uniform direction times radius * U^(1/d)
        scale = self.radius * torch.rand((), generator=self.generator,
                                         dtype=torch.float64) ** (1.0 / total) / size
        for p, n in zip(params, noise):
            p.add_((n * scale).to(p.device, p.dtype))
        self.last_perturbation = self.steps
        self.perturbations += 1

    # The counters and the noise generator are not per-parameter state, so torch's state_dict
    # would drop them: a resumed run would perturb at other steps, with other noise.
    def state_dict(self) -> dict:
        state = super().state_dict()
        state["pgd"] = {"steps": self.steps, "last_perturbation": self.last_perturbation,
                        "perturbations": self.perturbations,
                        "generator": self.generator.get_state()}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        if "pgd" not in state_dict:
            raise ValueError("state_dict: not a PerturbedGD state (no 'pgd' entry with its "
                             "counters and generator)")
        state_dict = dict(state_dict)
        ours = state_dict.pop("pgd")
        super().load_state_dict(state_dict)
        self.steps, self.last_perturbation = ours["steps"], ours["last_perturbation"]
        self.perturbations = ours["perturbations"]
        self.generator.set_state(ours["generator"])
