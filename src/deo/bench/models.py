"""The paper's character-level language models: nanoGPT's GPT, and a small LSTM.

GPT follows Karpathy's nanoGPT model.py: token + position embeddings, pre-LayerNorm blocks of
causal self-attention and a 4x GELU MLP, a final LayerNorm and an lm_head tied to the token
embedding. Attention has two interchangeable paths (``GPTConfig.attention``):

* ``"sdpa"``: ``F.scaled_dot_product_attention``; fast, but its fused CPU kernels have no
  double backward, so exact Hessian-vector products through it fail.
* ``"math"``: the same function written out (softmax(q k^T / sqrt(d)) v); twice differentiable,
  for ``deo.hessian`` ground truth. Switch an existing model with :func:`set_attention`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import check_positive_ints

ATTENTION_KINDS = ("sdpa", "math")


def _check_dropout(dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


def _check_attention(kind: str) -> None:
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {kind!r}")


@dataclass
class GPTConfig:
    block_size: int
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = False  # bias in Linear and LayerNorm; the paper (like nanoGPT's default) has none
    attention: str = "sdpa"

    def __post_init__(self):
        check_positive_ints(self, "block_size", "vocab_size", "n_layer", "n_head", "n_embd")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd must be divisible by n_head, got n_embd={self.n_embd}, "
                f"n_head={self.n_head}"
            )
        _check_dropout(self.dropout)
        _check_attention(self.attention)


# design.md section 4: both settings use block 64, dropout 0, no bias.
GPT_PRESETS: dict[str, dict] = {
    "small": dict(n_layer=4, n_head=4, n_embd=128, block_size=64),  # 0.80M params at vocab 65
    "complex": dict(n_layer=6, n_head=6, n_embd=384, block_size=64),  # 10.65M params
}


def gpt_config(preset: str, vocab_size: int, **overrides) -> GPTConfig:
    """A :class:`GPTConfig` from a named preset ('small' or 'complex'), fields overridable."""
    if preset not in GPT_PRESETS:
        raise ValueError(f"preset must be one of {tuple(GPT_PRESETS)}, got {preset!r}")
    return GPTConfig(**{**GPT_PRESETS[preset], "vocab_size": vocab_size, **overrides})


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.kind = config.attention
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        # Lower-triangular mask for the "math" path; a buffer so .to(device) moves it, not
        # persistent so state_dicts are the same for both paths.
        mask = torch.tril(torch.ones(config.block_size, config.block_size, dtype=torch.bool))
        self.register_buffer("causal_mask", mask.view(1, 1, *mask.shape), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (B, T, C) -> (B, n_head, T, head_size)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if self.kind == "sdpa":
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
            )
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(~self.causal_mask[:, :, :T, :T], float("-inf"))
            att = self.attn_dropout(F.softmax(att, dim=-1))
            y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: one tensor serves as input embedding and output projection.
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2: scale the init of projections into the residual stream by 1/sqrt(2 n_layer),
        # so the residual's variance does not grow with depth (two additions per block).
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self, non_embedding: bool = True) -> int:
        """Parameter count, tied weights once. As nanoGPT, ``non_embedding`` leaves out the
        position embedding (the token embedding stays: it is also the lm_head)."""
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a tied tensor once
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> logits (B, T, vocab), and the mean cross-entropy with
        ``targets`` (B, T) if given (else None)."""
        _, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size={self.config.block_size}")
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss


def set_attention(model: nn.Module, kind: str) -> str:
    """Switch every causal self-attention layer in ``model`` to ``kind`` ('sdpa' or 'math').

    Returns the previous kind (of the first layer) so callers can switch back. The two paths
    share all parameters, so this changes the numerics only up to rounding.
    """
    _check_attention(kind)
    layers = [m for m in model.modules() if isinstance(m, CausalSelfAttention)]
    if not layers:
        raise ValueError(f"model {type(model).__name__} has no CausalSelfAttention layers")
    previous = layers[0].kind
    for layer in layers:
        layer.kind = kind
    for module in model.modules():  # keep the config honest, e.g. for checkpoints
        if isinstance(module, GPT):
            module.config.attention = kind
    return previous


@contextmanager
def math_attention(model: nn.Module) -> Iterator[nn.Module]:
    """``with math_attention(model):`` double-differentiable attention, restored on exit."""
    previous = set_attention(model, "math")
    try:
        yield model
    finally:
        set_attention(model, previous)


@dataclass
class LSTMConfig:
    vocab_size: int
    n_embd: int = 128
    n_hidden: int = 256
    n_layers: int = 2
    dropout: float = 0.0  # between LSTM layers and before the head

    def __post_init__(self):
        check_positive_ints(self, "vocab_size", "n_embd", "n_hidden", "n_layers")
        _check_dropout(self.dropout)


class CharLSTM(nn.Module):
    """Embedding -> multi-layer LSTM -> linear head; the paper's "other architectures" case."""

    def __init__(self, config: LSTMConfig):
        super().__init__()
        if not isinstance(config, LSTMConfig):
            raise TypeError(f"config must be an LSTMConfig, got {type(config).__name__}")
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.n_embd)
        self.lstm = nn.LSTM(
            config.n_embd,
            config.n_hidden,
            num_layers=config.n_layers,
            batch_first=True,
            # nn.LSTM warns if given dropout with a single layer (it would apply to nothing)
            dropout=config.dropout if config.n_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.n_hidden, config.vocab_size)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Same contract as :meth:`GPT.forward`; each call starts from a zero hidden state."""
        hidden, _ = self.lstm(self.embedding(idx))
        logits = self.head(self.dropout(hidden))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss
