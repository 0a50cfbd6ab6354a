"""The paper's training recipe, shared by the language tasks, ``deo estimator`` and ``deo track``.

:func:`cosine_lr` is nanoGPT's schedule (linear warm-up, then cosine decay to ``min_lr``) and
:func:`decay_groups` its weight-decay split (decay on matrices and embeddings, none on norms
and biases). ``PAPER_STEPS`` and ``PAPER_MIN_LR`` are the paper's run length and final lr
(design.md, section 4), the schedule ``deo estimator`` and ``deo track`` follow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

PAPER_STEPS = 20000
PAPER_MIN_LR = 1e-4


def cosine_lr(step: int, lr: float, min_lr: float, warmup: int, total: int) -> float:
    """The lr at ``step`` (from 0): ``lr * (step + 1) / warmup`` for the first ``warmup``
    steps, then cosine decay from ``lr`` to ``min_lr`` at ``total``, and ``min_lr`` after."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - min_lr)


def decay_groups(params: Iterable[torch.Tensor], weight_decay: float) -> list[dict[str, Any]]:
    """Two param groups, in the order of ``params``: the tensors with dim >= 2 with
    ``weight_decay``, then the rest (biases, norm gains) with none."""
    params = list(params)
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
