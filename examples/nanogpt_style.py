"""A nanoGPT-style training loop with DEO, no closure: the passes run in the loop.

    python examples/nanogpt_style.py --steps 200 --out out-nanogpt
    python examples/nanogpt_style.py --steps 400 --out out-nanogpt --resume

What changes from nanoGPT's train.py, and why:

* the optimizer: ``deo.DEO(None, base=configure_optimizers(...), **deo.recommended("saddle"))``
  wraps the model's own weight-decay groups;
* the micro-batches of a step are drawn BEFORE its passes (nanoGPT prefetches the next batch
  inside the loop over micro-steps): DEO's displaced pass must see the same batches;
* ``optimizer.begin_step()`` before the main pass, and after it ``while
  optimizer.first_step(loss, grad_scaler=scaler): <the same micro-batches again>;
  optimizer.second_step()``. The rest is nanoGPT's: unscale, clip, ``scaler.step``,
  ``scaler.update``, ``zero_grad``. Clipping here is safe: DEO already holds both gradients.

Checkpoints hold the model, DEO (its N and counters), the scaler, the iteration and every
RNG; ``--resume`` continues bit for bit. The model is the benchmark's character GPT (tiny
Shakespeare if you pass ``--data``, else the Python help text every install carries).
"""

from __future__ import annotations

import argparse
import math
import os
from contextlib import nullcontext
from pathlib import Path

import torch

import deo
from deo.bench.data import load_corpus
from deo.bench.models import GPT, gpt_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out-nanogpt", help="checkpoint folder")
    parser.add_argument("--resume", action="store_true", help="continue from --out/ckpt.pt")
    parser.add_argument("--data", default=None, help="a text file (default: Python's help)")
    parser.add_argument("--steps", type=int, default=200, help="iterations in all")
    parser.add_argument("--accumulation", type=int, default=2, help="micro-batches per step")
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--grad-clip", type=float, default=1.0, help="0: no clipping")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        default="float32", help="autocast dtype; float16 uses a GradScaler")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--save-every", type=int, default=50)
    parser.add_argument("--stop-after", type=int, default=None,
                        help="end this run after so many iterations (then --resume)")
    parser.add_argument("--seed", type=int, default=1337)
    return parser.parse_args(argv)


def configure_optimizers(model: torch.nn.Module, weight_decay: float, learning_rate: float,
                         betas: tuple[float, float]) -> torch.optim.Optimizer:
    """nanoGPT's: weight decay on the matrices (dim >= 2), none on biases and norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)


def get_lr(it: int, args: argparse.Namespace) -> float:
    """Linear warm-up, then cosine decay to lr / 10 (nanoGPT's schedule)."""
    if it < args.warmup:
        return args.lr * (it + 1) / args.warmup
    progress = min(1.0, (it - args.warmup) / max(1, args.steps - args.warmup))
    return args.lr / 10 + 0.5 * (1 + math.cos(math.pi * progress)) * (args.lr - args.lr / 10)


def save_atomically(state: dict, path: Path) -> None:
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)  # a crash mid-write leaves the last checkpoint intact


def train(args: argparse.Namespace) -> list[float]:
    """Train to ``args.steps``; the losses of the iterations run now."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    corpus = load_corpus(args.data)
    model = GPT(gpt_config("small", corpus.vocab_size, block_size=args.block_size,
                           n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                           dropout=args.dropout)).to(args.device)
    optimizer = deo.DEO(None, base=configure_optimizers(model, 0.1, args.lr, (0.9, 0.99)),
                        **deo.recommended("saddle"))
    scaler = torch.amp.GradScaler(args.device, enabled=args.dtype == "float16")
    autocast = nullcontext() if args.dtype == "float32" else torch.autocast(
        args.device, dtype=getattr(torch, args.dtype))
    data = torch.Generator().manual_seed(args.seed)  # the batches' own RNG, not dropout's
    start = 0
    if args.resume:
        checkpoint = torch.load(out / "ckpt.pt", weights_only=False)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        data.set_state(checkpoint["data_rng"])
        torch.set_rng_state(checkpoint["rng"])
        if checkpoint["cuda_rng"] is not None:
            torch.cuda.set_rng_state_all(checkpoint["cuda_rng"])
        start = checkpoint["iter_num"]

    def forward_backward(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        total = torch.zeros((), device=args.device)
        for x, y in batches:
            with autocast:
                _, loss = model(x, y)
                loss = loss / len(batches)
            scaler.scale(loss).backward()
            total += loss.detach()
        return total

    losses = []
    end = args.steps if args.stop_after is None else min(args.steps, start + args.stop_after)
    for it in range(start, end):
        for group in optimizer.param_groups:
            group["lr"] = get_lr(it, args)
        batches = [tuple(t.to(args.device) for t in corpus.get_batch(
            "train", args.batch_size, args.block_size, data)) for _ in range(args.accumulation)]
        optimizer.begin_step()  # before the main pass: the dropout masks DEO replays
        loss = forward_backward(batches)
        while optimizer.first_step(loss, grad_scaler=scaler):  # True: parameters displaced
            forward_backward(batches)
            optimizer.second_step()
        if args.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))
        if (it + 1) % args.save_every == 0 or it + 1 == end:
            save_atomically({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scaler": scaler.state_dict(), "iter_num": it + 1,
                             "data_rng": data.get_state(), "rng": torch.get_rng_state(),
                             "cuda_rng": torch.cuda.get_rng_state_all()
                             if torch.cuda.is_available() else None},
                            out / "ckpt.pt")
        if it % 10 == 0:
            print(f"iter {it}: loss {float(loss):.4f}, curvature {float(optimizer.curvature):.3g},"
                  f" extra gradients {int(optimizer.stats['extra_gradients'])}", flush=True)
    return losses


if __name__ == "__main__":
    train(parse_args())
