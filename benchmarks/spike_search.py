"""Does the spike-prone GPT spike? AdamW alone on variants of the `spikes` preset's task.

Issue 7's spike target compares DEO's spike count with AdamW's, which means nothing unless
AdamW spikes. This trains the preset's character GPT (0.8M parameters, no warm-up, constant
lr) with AdamW at higher learning rates, without gradient clipping, with smaller batches or a
slower second moment, and reports for each run:

* spikes: the bench's count (a step whose loss is >= 2x the mean of the previous 100);
* max ratio: the largest loss / (mean of the previous 100 losses) over the run;
* over 1.2x: steps above 1.2x that mean (the threshold of DEO's ``trigger="spike"``);
* the final validation loss.

    python benchmarks/spike_search.py [--steps 1500] [--seed 0] [--workers 2]
        [--configs LR:CLIP:BATCH:BETA2 ...]        (CLIP "none": no clipping)
Writes benchmarks/results/spike_search_<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import math
from concurrent.futures import ProcessPoolExecutor

import torch
from common import machine, result_stem, write_result

from deo.bench.lm import CharLM
from deo.bench.runner import run_one
from deo.bench.task import SPIKE_WINDOW

DEFAULT_CONFIGS = ("1e-2:1.0:12:0.999",  # the preset's own setting
                   "1e-2:none:12:0.999", "2e-2:none:12:0.999", "3e-2:none:12:0.999",
                   "3e-2:1.0:12:0.999", "1e-2:none:2:0.999", "1e-2:none:12:0.9999")


def parse_config(text: str) -> dict:
    try:
        lr, clip, batch, beta2 = text.split(":")
        return {"lr": float(lr), "max_grad_norm": None if clip == "none" else float(clip),
                "batch_size": int(batch), "beta2": float(beta2)}
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"--configs: expected LR:CLIP:BATCH:BETA2 with CLIP a number or 'none', "
            f"e.g. 1e-2:none:12:0.999; got {text!r}") from error


def loss_ratios(losses: list[float], window: int = SPIKE_WINDOW) -> list[float]:
    """Each loss over the (positive) mean of the ``window`` losses before it, as the spike
    rule reads it; windows whose mean is not positive are left out."""
    return [losses[i] * window / total for i in range(window, len(losses))
            if (total := sum(losses[i - window:i])) > 0]


def train(config: dict, steps: int, seed: int) -> dict:
    torch.set_num_threads(1)  # one core per worker
    task = CharLM(name="gpt-spikes", preset="small", steps=steps, lr=config["lr"], warmup=0,
                  min_lr=config["lr"], batch_size=config["batch_size"],
                  betas=(0.9, config["beta2"]), max_grad_norm=config["max_grad_norm"])
    record = run_one(task, "adamw", seed, progress=False)
    losses = [loss for _, loss in record.train_loss]  # every step's (steps <= 2000)
    ratios = [r for r in loss_ratios(losses) if math.isfinite(r)]  # a diverged run ends in NaN
    return {**config, "status": record.status, "spikes": record.spikes,
            "max_ratio": max(ratios, default=float("nan")),
            "over_1.2": sum(r > 1.2 for r in ratios),
            "val_loss": record.final.get("loss", float("nan"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--configs", nargs="+", type=parse_config,
                        default=[parse_config(c) for c in DEFAULT_CONFIGS])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.steps > 2000:  # the runner records one loss per step up to 2000 steps
        parser.error(f"--steps: at most 2000 (loss ratios need every step), got {args.steps}")
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(train, args.configs, [args.steps] * len(args.configs),
                             [args.seed] * len(args.configs)))
    table = ["| lr | clip | batch | beta2 | status | spikes | max ratio | over 1.2x | val loss |",
             "|---|---|---|---|---|---|---|---|---|"]
    table += [f"| {r['lr']:g} | {r['max_grad_norm'] or 'none'} | {r['batch_size']} | "
              f"{r['beta2']:g} | {r['status']} | {r['spikes']} | {r['max_ratio']:.3f} | "
              f"{r['over_1.2']} | {r['val_loss']:.4f} |" for r in rows]
    write_result(result_stem(args.out, "spike_search", torch.device("cpu")),
                 {"machine": machine(torch.device("cpu")), "settings": {
                     "steps": args.steps, "seed": args.seed}, "rows": rows}, table)


if __name__ == "__main__":
    main()
