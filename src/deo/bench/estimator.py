"""``deo estimator``: does the dimer find the minimum-curvature direction? Ground truth decides.

Trains the paper's character GPT for a few hundred AdamW steps, fixes one batch, computes the
extreme eigenpairs of that batch's Hessian by Lanczos (``deo.hessian``), then lets each
rotation rule turn N on the same batch (parameters frozen) and records, against the number of
displaced-gradient evaluations: the exact curvature along N (N^T H N), the rule's own
estimate, and cos(N, v_min).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .. import hessian
from ..optimizer import DEO
from .data import CharCorpus, load_corpus
from .files import describe_file, write_atomically
from .models import GPT, gpt_config, math_attention
from .recipe import PAPER_MIN_LR, PAPER_STEPS, cosine_lr, decay_groups


@dataclass
class EstimatorConfig:
    data: str | None = None  # text file; None: the offline default corpus
    model: str = "small"  # GPT preset (design.md, section 4)
    model_overrides: dict = field(default_factory=dict)  # e.g. a smaller width for tests
    train_steps: int = 300  # AdamW steps before the measurement
    batch_size: int = 12
    lr: float = 1e-3
    warmup: int = 100
    rules: tuple[str, ...] = ("ritz", "oja")
    evaluations: int = 200  # displaced-gradient budget of each rule
    probes_per_update: int = 10  # evaluations per probe step while probing the fixed batch
    displacement: float = 6e-3
    lanczos_tol: float = 1e-3
    seed: int = 0


def train_gpt(corpus: CharCorpus, config: EstimatorConfig) -> GPT:
    """The paper's recipe: AdamW, betas (0.9, 0.99), decay 0.1 on 2-D tensors, clip 1.0."""
    torch.manual_seed(config.seed)
    model = GPT(gpt_config(config.model, corpus.vocab_size, **config.model_overrides))
    opt = torch.optim.AdamW(decay_groups(model.parameters(), 0.1), lr=config.lr,
                            betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(config.seed)
    block = model.config.block_size
    for step in range(config.train_steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, config.lr, PAPER_MIN_LR, config.warmup, PAPER_STEPS)
        x, y = corpus.get_batch("train", config.batch_size, block, gen)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model


def measure_rule(model: GPT, batch, rule: str, config: EstimatorConfig, operator, truth) -> dict:
    """Turn N with ``rule`` on ``batch`` (parameters frozen) and score it against ``truth``."""
    frozen = copy.deepcopy(model)
    x, y = batch
    opt = DEO(frozen.parameters(), base=torch.optim.SGD, lr=0.0, alpha=0.0, interval=1,
              displacement=config.displacement, rotation=rule,
              probes_per_update=min(config.probes_per_update, config.evaluations),
              seed=config.seed)

    def closure():
        opt.zero_grad()
        _, loss = frozen(x, y)
        loss.backward()
        return loss

    trace, reached = [], None
    start = time.perf_counter()
    while int(opt.stats["extra_gradients"]) < config.evaluations:
        opt.step(closure)
        n = operator.flatten(opt.direction).double()
        rayleigh = float(n @ operator.matvec(n).double())  # exact N^T H N (double backward)
        cos = abs(hessian.cosine(opt.direction, truth.v_min))
        point = {"evaluations": int(opt.stats["extra_gradients"]), "curvature_exact": rayleigh,
                 "curvature_estimate": float(opt.curvature), "cos_v_min": cos}
        trace.append(point)
        if reached is None and cos >= 0.95 and \
                abs(rayleigh - truth.lambda_min) <= 0.05 * abs(truth.lambda_min):
            reached = point["evaluations"]
    last = trace[-1]
    return {"rule": rule, "evaluations": last["evaluations"],
            "curvature_exact": last["curvature_exact"],
            "curvature_estimate": last["curvature_estimate"], "cos_v_min": last["cos_v_min"],
            "evaluations_to_target": reached, "seconds": time.perf_counter() - start,
            "trace": trace}


def run_estimator(config: EstimatorConfig, out: str | Path | None = None, log=print) -> dict:
    """Train, compute Lanczos ground truth on a fixed batch, measure each rule; write JSON."""
    corpus = load_corpus(config.data)
    started = time.perf_counter()
    model = train_gpt(corpus, config)
    log(f"trained {config.model} GPT ({sum(p.numel() for p in model.parameters()):,} params) "
        f"for {config.train_steps} AdamW steps on {corpus.name} "
        f"[{time.perf_counter() - started:.0f}s]")
    batch = corpus.get_batch("train", config.batch_size, model.config.block_size,
                             torch.Generator().manual_seed(config.seed + 1))
    with math_attention(model):  # the fused attention kernels have no double backward
        params = list(model.parameters())

        def loss_fn():
            return model(*batch)[1]

        truth = hessian.extreme_eigenpairs(loss_fn, params, tol=config.lanczos_tol,
                                           seed=config.seed)
        log(f"Lanczos on the fixed batch: lambda_min {truth.lambda_min:+.4f}, "
            f"lambda_max {truth.lambda_max:+.4f} ({truth.matvecs} Hessian products)")
        operator = hessian.HessianOperator(loss_fn, params)
        rules = []
        for rule in config.rules:
            result = measure_rule(model, batch, rule, config, operator, truth)
            rules.append(result)
            log(format_rule(result, truth.lambda_min))
    report = {"config": {**asdict(config), **describe_file(config.data)}, "corpus": corpus.name,
              "parameters": sum(p.numel() for p in params),
              "lambda_min": truth.lambda_min, "lambda_max": truth.lambda_max,
              "lanczos_matvecs": truth.matvecs, "rules": rules}
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(out, lambda tmp: tmp.write_text(json.dumps(report, indent=1)))
    return report


def format_rule(result: dict, lambda_min: float) -> str:
    reached = result["evaluations_to_target"]
    return (f"{result['rule']:>5}: after {result['evaluations']} evaluations "
            f"curvature along N {result['curvature_exact']:+.4f} "
            f"({result['curvature_exact'] / lambda_min:.1%} of lambda_min; estimate "
            f"{result['curvature_estimate']:+.4f}), cos(N, v_min) {result['cos_v_min']:.3f}; "
            f"target (cos >= 0.95, within 5%) "
            f"{'reached at ' + str(reached) if reached else 'not reached'}")
