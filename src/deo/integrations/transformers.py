"""DEO inside Hugging Face ``transformers.Trainer``: ``DEOTrainer``.

The Trainer runs forward and backward for every micro-batch of an optimizer step
(``training_step``), clips, then calls ``optimizer.step()`` with no closure, which DEO needs
on probe steps. ``DEOTrainer`` supplies it:

- on a step where ``DEO.probe_due()`` (a scheduled probe, or every step with
  ``trigger="spike"``), ``training_step`` calls ``deo.begin_step()`` before the first
  micro-batch and records each micro-batch and its loss; the Trainer's own passes are the
  probe's main pass, so DEO costs the paper's one extra forward and backward per probe;
- ``create_optimizer`` wraps the optimizer the Trainer builds (``args.optim``, its weight
  decay groups, or the one passed as ``optimizers=``) in DEO, whose ``step()`` without a
  closure first runs DEO's passes in the loop: ``while deo.first_step(loss)`` it replays the
  recorded micro-batches through ``training_step`` (DEO replays the RNG state, so the same
  dropout masks) at the displaced parameters, then ``deo.second_step()``;
- ``TrainingArguments.max_grad_norm`` (1.0 by default) moves into DEO's ``max_grad_norm``: the
  Trainer would clip the main gradient but not the displaced one; DEO clips after the
  correction. The Trainer then clips nothing (it still logs the gradient norm).

fp16 loss scaling (``TrainingArguments(fp16=True)``) is refused: accelerate's GradScaler
calls ``optimizer.step`` without a closure after unscaling the main gradient only. bf16 works.
"""

from __future__ import annotations

import copy
import weakref
from typing import Any

import torch

from ..optimizer import DEO

try:
    from transformers import Trainer
except ImportError as error:
    raise ImportError(
        'deo.integrations.transformers needs transformers and accelerate: '
        'pip install "deo[transformers]"'
    ) from error

__all__ = ["DEOTrainer"]


class _TrainerDEO(DEO):
    """DEO whose ``step()`` without a closure first runs its trainer's displaced passes."""

    _trainer: weakref.ref | None = None

    def step(self, closure=None, **kwargs):
        trainer = self._trainer() if self._trainer is not None else None
        if closure is None and trainer is not None:
            trainer._run_displaced_passes()
        return super().step(closure, **kwargs)


class DEOTrainer(Trainer):
    """A ``transformers.Trainer`` that optimizes with DEO around its usual optimizer.

    Args:
        *args, **kwargs: as for ``transformers.Trainer``.
        deo_kwargs: DEO's own settings (``config``, ``alpha``, ``interval``, ...); the base
            optimizer and its hyperparameters come from the TrainingArguments as usual.
            ``max_grad_norm`` defaults to ``args.max_grad_norm``.

    ``trainer.deo`` is the DEO instance once training has started (``trainer.deo.stats``).
    """

    def __init__(self, *args: Any, deo_kwargs: dict[str, Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if getattr(self.accelerator, "scaler", None) is not None:
            raise ValueError(
                "DEOTrainer does not support fp16 loss scaling (TrainingArguments(fp16=True)): "
                "accelerate's GradScaler calls optimizer.step() without a closure and unscales "
                "the main gradient only, which would corrupt DEO's probe; use bf16=True")
        self.deo_kwargs = dict(deo_kwargs or {})
        if self.args.max_grad_norm and self.args.max_grad_norm > 0:
            self.deo_kwargs.setdefault("max_grad_norm", self.args.max_grad_norm)
        if self.args.max_grad_norm:  # a copy: the caller's TrainingArguments stay as they were
            self.args = copy.copy(self.args)
            object.__setattr__(self.args, "max_grad_norm", 0.0)
        self.deo: DEO | None = None
        self._deo_batches: list[tuple] = []  # this probe step's micro-batches and losses
        self._deo_losses: list[torch.Tensor] = []
        self._deo_replaying = False

    def create_optimizer(self, *args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(*args, **kwargs)
        if isinstance(optimizer, _TrainerDEO):
            return optimizer
        if isinstance(optimizer, DEO):
            raise TypeError(
                "DEOTrainer builds DEO itself, around the Trainer's optimizer: pass the base "
                "optimizer (or nothing) as optimizers=, and DEO's settings as deo_kwargs=")
        self.optimizer = self.deo = _TrainerDEO(None, base=optimizer, **self.deo_kwargs)
        self.deo._trainer = weakref.ref(self)
        return self.optimizer

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any], *args: Any,
                      **kwargs: Any) -> torch.Tensor:
        deo = self.deo
        recording = not self._deo_replaying and deo is not None and deo.probe_due()
        if recording:
            if not self._deo_batches:  # the step's first micro-batch: before its main pass
                deo.begin_step()
            self._deo_batches.append((model, inputs, args, kwargs))
        loss = super().training_step(model, inputs, *args, **kwargs)
        if recording:
            self._deo_losses.append(loss.detach())
        return loss

    def _run_displaced_passes(self) -> None:
        """The Trainer has run the main pass over this step's micro-batches: run them again
        at every displaced point DEO asks for (its passes in the loop, deo.first_step)."""
        batches, losses = self._deo_batches, self._deo_losses
        self._deo_batches, self._deo_losses = [], []
        if not batches:
            return  # a cheap step
        main_loss = torch.stack([loss.float() for loss in losses]).sum()
        while self.deo.first_step(main_loss):
            self.deo.zero_grad(set_to_none=True)
            self._deo_replaying = True
            try:
                replayed = [self.training_step(model, inputs, *args, **kwargs)
                            for model, inputs, args, kwargs in batches]
            finally:
                self._deo_replaying = False
            self.deo.second_step(torch.stack([loss.detach().float() for loss in replayed]).sum())
