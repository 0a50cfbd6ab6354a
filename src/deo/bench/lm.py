"""Character-level language modelling tasks: the paper's GPT settings, an LSTM, a spiky GPT.

Recipe (design.md, section 4): block 64, batch 12, dropout 0, no bias, lr 1e-3 with
``warmup`` linear warm-up steps and cosine decay to 1e-4 over the run, betas (0.9, 0.99),
weight decay 0.1 on 2-D tensors only, gradient clipping at 1.0, evaluation every
``eval_every`` steps on ``eval_iters`` batches of each split. The evaluation batches are
drawn from a fixed seed, so every optimizer is judged on the same text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .data import CharCorpus, load_corpus
from .files import describe_file
from .models import GPT, CharLSTM, LSTMConfig, gpt_config, set_attention
from .recipe import cosine_lr, decay_groups
from .task import Task

MODELS = ("gpt", "lstm")


class CharLM(Task):
    """Next-character prediction on a text corpus (``data``: a path, or None for the default)."""

    def __init__(self, name: str = "gpt-small", *, model: str = "gpt", preset: str = "small",
                 model_overrides: dict[str, Any] | None = None, data: str | None = None,
                 steps: int = 20000, eval_every: int = 250, eval_iters: int = 20,
                 batch_size: int = 12, block_size: int = 64, lr: float = 1e-3,
                 min_lr: float = 1e-4, warmup: int = 100, weight_decay: float = 0.1,
                 max_grad_norm: float | None = 1.0, betas: tuple[float, float] | None = None,
                 eps: float | None = None, deo_displacement: float | None = None):
        if model not in MODELS:
            raise ValueError(f"model: expected one of {list(MODELS)}, got {model!r}")
        for key, value in (("steps", steps), ("eval_every", eval_every),
                           ("eval_iters", eval_iters), ("batch_size", batch_size),
                           ("block_size", block_size)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{key}: expected an integer >= 1, got {value!r}")
        if not (lr > 0 and 0 <= min_lr <= lr and warmup >= 0):
            raise ValueError(f"lr, min_lr, warmup: need lr > 0, 0 <= min_lr <= lr, warmup >= 0; "
                             f"got {lr}, {min_lr}, {warmup}")
        self.name, self.model, self.preset, self.data = name, model, preset, data
        self.model_overrides = dict(model_overrides or {})
        self.steps, self.eval_every, self.eval_iters = steps, eval_every, eval_iters
        self.batch_size, self.block_size = batch_size, block_size
        self.lr, self.min_lr, self.warmup, self.weight_decay = lr, min_lr, warmup, weight_decay
        self.max_grad_norm = max_grad_norm
        # adam/adamw betas and eps for this task (the spike setting uses beta2 = 0.999)
        self.base_overrides = {**({"betas": list(betas)} if betas is not None else {}),
                               **({"eps": float(eps)} if eps is not None else {})}
        # None: DEO's default, 10 x lr, which at a high lr probes far outside the quadratic
        # region; the stability setting fixes it
        self.deo_displacement = deo_displacement

    def check(self) -> None:
        corpus = load_corpus(self.data)
        for split in ("train", "val"):
            tokens = len(corpus.split(split))
            if tokens <= self.block_size:
                raise ValueError(
                    f"--data: the {split} split of corpus {corpus.name!r} has {tokens} "
                    f"characters, task {self.name!r} needs more than block_size="
                    f"{self.block_size}; pass a longer text")

    def config(self) -> dict[str, Any]:
        # the data file by name and content hash: a path names a folder of one machine only
        return {**super().config(), **describe_file(self.data)}

    def setup(self, seed: int, device: torch.device) -> None:
        self._corpus: CharCorpus = load_corpus(self.data)
        self._device = device
        torch.manual_seed(seed)
        if self.model == "gpt":
            config = gpt_config(self.preset, self._corpus.vocab_size,
                                **{"block_size": self.block_size, **self.model_overrides})
            self._net = GPT(config).to(device)
        else:
            self._net = CharLSTM(LSTMConfig(self._corpus.vocab_size,
                                            **self.model_overrides)).to(device)
        self._train_generator = torch.Generator().manual_seed(seed)
        self._batches: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def enable_double_backward(self) -> None:
        if self.model == "gpt":  # the fused attention kernels have no double backward
            set_attention(self._net, "math")

    def param_groups(self) -> list[dict[str, Any]]:
        return decay_groups(self._net.parameters(), self.weight_decay)

    def loss_fn(self, step: int) -> Callable[[], torch.Tensor]:
        x, y = self._batch(step)
        self._net.train()
        return lambda: self._net(x, y)[1]

    def _batch(self, step: int):
        if step not in self._batches:  # one batch per step, drawn in step order
            self._batches = {step: tuple(t.to(self._device) for t in self._corpus.get_batch(
                "train", self.batch_size, self.block_size, self._train_generator))}
        return self._batches[step]

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self._net.eval()
        result = {}
        for split, key in (("val", "loss"), ("train", "train_loss")):
            generator = torch.Generator().manual_seed(1234)  # the same batches for everyone
            losses = []
            for _ in range(self.eval_iters):
                x, y = self._corpus.get_batch(split, self.batch_size, self.block_size, generator)
                losses.append(float(self._net(x.to(self._device), y.to(self._device))[1]))
            result[key] = sum(losses) / len(losses)
        self._net.train()
        return result

    def lr_at(self, step: int) -> float:
        return cosine_lr(step, self.lr, self.min_lr, self.warmup, self.steps)
