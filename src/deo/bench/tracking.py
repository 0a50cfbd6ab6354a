"""Does N follow the minimum-curvature direction while the network trains?

The Hessian of one minibatch has its own v_min (design.md, section 2), so the ground truth
is the Hessian of a fixed evaluation batch several times larger than the training batch.
Every ``every`` steps of a real DEO training run this records, on that batch: lambda_min and
lambda_max (Lanczos, warm-started from the previous checkpoint), the exact curvature along N
(N^T H_eval N), cos(N, v_min), and DEO's own estimate. Records are appended to a JSONL file
as they are made, so an interrupted run keeps every finished checkpoint.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .. import hessian
from ..optimizer import DEO
from .data import load_corpus
from .files import describe_file
from .models import GPT, gpt_config, math_attention
from .recipe import PAPER_MIN_LR, PAPER_STEPS, cosine_lr, decay_groups


@dataclass
class TrackConfig:
    data: str | None = None
    model: str = "small"
    model_overrides: dict = field(default_factory=dict)
    steps: int = 2000
    every: int = 250
    batch_size: int = 12
    eval_batch_size: int = 96  # >= 8x the training batch: the shared, not batch-specific, v_min
    lr: float = 1e-3
    warmup: int = 100
    alpha: float = 5.0
    interval: int = 10
    displacement: float = 6e-3
    rotation: str = "ritz"
    probes_per_update: int = 1
    hessian_memory: float = 0.0
    ritz_window: int = 1
    rotation_lr: float = 1e-3
    lanczos_tol: float = 1e-2
    seed: int = 0


def build(config: TrackConfig, vocab_size: int) -> tuple[GPT, DEO]:
    torch.manual_seed(config.seed)
    model = GPT(gpt_config(config.model, vocab_size, **config.model_overrides))
    opt = DEO(decay_groups(model.parameters(), 0.1), base=torch.optim.AdamW, lr=config.lr,
              betas=(0.9, 0.99), alpha=config.alpha,
              interval=config.interval, displacement=config.displacement,
              rotation=config.rotation, probes_per_update=config.probes_per_update,
              hessian_memory=config.hessian_memory, ritz_window=config.ritz_window,
              rotation_lr=config.rotation_lr,
              max_grad_norm=1.0, seed=config.seed)
    return model, opt


def checkpoint_record(model: GPT, opt: DEO, eval_batch, config: TrackConfig, start) -> dict:
    """Ground truth on the evaluation batch against DEO's N."""
    params = [p for group in opt.param_groups for p in group["params"]]  # N's order
    with math_attention(model):
        def loss_fn():
            return model(*eval_batch)[1]

        truth = hessian.extreme_eigenpairs(loss_fn, params, tol=config.lanczos_tol,
                                           seed=config.seed, start=start)
        n = opt.direction
        hn = hessian.hessian_vector_product(loss_fn, params, n)
    curvature = sum(float((a.double() * b.double()).sum()) for a, b in zip(n, hn))
    return {"lambda_min": truth.lambda_min, "lambda_max": truth.lambda_max,
            "curvature_eval": curvature, "ratio": curvature / truth.lambda_min,
            "cos_v_min": abs(hessian.cosine(n, truth.v_min)),
            "curvature_estimate": float(opt.curvature),
            "extra_gradients": int(opt.stats["extra_gradients"]), "lanczos_matvecs": truth.matvecs,
            "_start": [a + b for a, b in zip(truth.v_min, truth.v_max)]}


def track_training(config: TrackConfig, out: str | Path, log=print) -> list[dict]:
    """Train with DEO and append a ground-truth record every ``config.every`` steps."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    corpus = load_corpus(config.data)
    model, opt = build(config, corpus.vocab_size)
    block = model.config.block_size
    train_gen = torch.Generator().manual_seed(config.seed)
    eval_batch = corpus.get_batch("train", config.eval_batch_size, block,
                                  torch.Generator().manual_seed(config.seed + 10_000))
    records, start, began = [], None, time.perf_counter()
    with out.open("a") as sink:
        sink.write(json.dumps({"config": {**asdict(config), **describe_file(config.data)}})
                   + "\n")
        for step in range(1, config.steps + 1):
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step - 1, config.lr, PAPER_MIN_LR, config.warmup,
                                        PAPER_STEPS)
            x, y = corpus.get_batch("train", config.batch_size, block, train_gen)

            def closure(x=x, y=y):
                opt.zero_grad()
                loss = model(x, y)[1]
                loss.backward()
                return loss

            loss = opt.step(closure)
            if step % config.every == 0:
                record = checkpoint_record(model, opt, eval_batch, config, start)
                start = record.pop("_start")
                record.update(step=step, train_loss=float(loss.detach()),
                              seconds=time.perf_counter() - began)
                records.append(record)
                sink.write(json.dumps(record) + "\n")
                sink.flush()
                log(f"step {step}: lambda_min {record['lambda_min']:+.3f}, curvature along N "
                    f"{record['curvature_eval']:+.3f} ({record['ratio']:.2f} of lambda_min), "
                    f"cos(N, v_min) {record['cos_v_min']:.3f}, loss {record['train_loss']:.3f}")
    return records


def median_ratio(records: list[dict]) -> float:
    """The target's statistic: median over checkpoints of curvature_eval / lambda_min."""
    ratios = sorted(r["ratio"] for r in records)
    mid = len(ratios) // 2
    return ratios[mid] if len(ratios) % 2 else 0.5 * (ratios[mid - 1] + ratios[mid])
