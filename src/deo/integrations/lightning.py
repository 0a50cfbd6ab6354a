"""DEO under PyTorch Lightning: checks for the settings that would corrupt its probe.

DEO needs no glue in Lightning's automatic optimization: Lightning passes a closure
(training_step + zero_grad + backward) to ``optimizer.step`` and DEO calls it, once more on
probe steps; ``optimizer.state_dict()`` goes into Lightning's checkpoints, so a run resumed
with ``Trainer.fit(..., ckpt_path=...)`` continues DEO's step counter, N and probe counters.

Three Trainer settings break that silently or late; add ``DEOCallback()`` to the Trainer's
callbacks and it refuses them when fit starts:

- ``accumulate_grad_batches > 1``: Lightning runs the first micro-batches' backward outside
  ``optimizer.step`` and hands DEO a closure over the last micro-batch only, so the displaced
  gradient covers a fraction of what the main gradient covers;
- ``gradient_clip_val``: Lightning clips after every closure call, the main and the displaced
  gradient separately, which turns DEO's finite difference into noise (use DEO's
  ``max_grad_norm=``, applied after the correction);
- ``precision="16-mixed"``: Lightning's GradScaler path calls ``scaler.step(optimizer)``
  without a closure, so DEO stops at its first probe step (use ``"bf16-mixed"``).
"""

from __future__ import annotations

from typing import Any

from ..optimizer import DEO

try:
    from lightning.pytorch import Callback
except ImportError:
    try:
        from pytorch_lightning import Callback
    except ImportError as error:
        raise ImportError(
            'deo.integrations.lightning needs PyTorch Lightning: pip install "deo[lightning]"'
        ) from error

__all__ = ["DEOCallback", "check_trainer"]


def check_trainer(trainer: Any, pl_module: Any) -> None:
    """Raise ``ValueError`` listing the Trainer settings that would corrupt DEO's probe."""
    if not any(isinstance(opt, DEO) for opt in trainer.optimizers):
        return
    if not pl_module.automatic_optimization:
        return  # manual optimization: the closure is the user's (README: accumulation)
    problems = []
    if trainer.accumulate_grad_batches != 1:
        problems.append(
            f"accumulate_grad_batches={trainer.accumulate_grad_batches}: Lightning hands "
            "optimizer.step a closure over the last micro-batch only, so DEO's displaced "
            "gradient would cover 1/k of the batch; accumulate inside one closure instead "
            "(manual optimization, see the README)")
    if trainer.gradient_clip_val:
        problems.append(
            f"gradient_clip_val={trainer.gradient_clip_val}: Lightning clips the main and the "
            "displaced gradient separately, which turns DEO's finite difference into noise; "
            "use deo.DEO(..., max_grad_norm=...) instead")
    if getattr(trainer.precision_plugin, "scaler", None) is not None:
        problems.append(
            "precision='16-mixed': Lightning calls GradScaler.step(optimizer) without a "
            "closure, which DEO needs on probe steps; use precision='bf16-mixed'")
    if problems:
        raise ValueError("DEO under Lightning: " + "; ".join(problems))


class DEOCallback(Callback):
    """Refuses, when fit starts, Trainer settings that would corrupt DEO's probe."""

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        check_trainer(trainer, pl_module)
