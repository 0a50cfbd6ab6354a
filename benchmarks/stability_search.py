"""Where does AdamW really spike? A documented search for the bench's stability settings.

Two families, AdamW alone, one CPU core per run (about 5 minutes or less each):

* ``gpt``: the paper's small character GPT with the levers the literature names for loss
  spikes: no warm-up (OLMo 2 reproduces its spikes by cutting it), beta2 0.999 with eps 1e-8
  to 1e-6, learning rates up to 3e-1 (Wortsman et al. 2023), no clipping, smaller batches,
  more depth or width. Keys: lr, eps, batch, layers, embd, heads, warmup, steps, beta2, clip.
* ``slingshot``: Thilak et al. 2022 (arXiv 2206.04817): a ReLU network fitted full-batch to
  200 images with Adam and no regularisation spikes in cycles once the training loss is ~0
  (deo.bench.vision.Slingshot). Keys: lr, steps, train, hidden, layers, eps.

For each run: the status, the final validation loss, the bench's 2x-rule spike count, OLMo
2's spike score on the loss and on the gradient norm (deo.bench.stability), the largest loss
over the mean of the 100 before it, and the wall time. Rows are appended to
results/stability_search_<device>.jsonl as runs finish, so ``--resume`` after an
interruption runs only what is missing; the .md table is rewritten from all rows at the end.

    python benchmarks/stability_search.py [--workers 2] [--seed 0] [--resume]
        [--configs FAMILY:key=value,... ...]
"""

from __future__ import annotations

import argparse
import json
import math
from concurrent.futures import ProcessPoolExecutor, as_completed

import torch
from common import machine, result_stem, write_result
from spike_search import loss_ratios

from deo.bench.lm import CharLM
from deo.bench.runner import run_one
from deo.bench.vision import Slingshot

GPT_DEFAULTS = {"lr": 3e-2, "eps": 1e-8, "batch": 12, "layers": 4, "embd": 128, "heads": 4,
                "warmup": 0, "steps": 3000, "beta2": 0.999, "clip": 0.0}
SLINGSHOT_DEFAULTS = {"lr": 1e-3, "steps": 40000, "train": 200, "hidden": 256, "layers": 2,
                      "eps": 1e-8}
DEFAULTS = {"gpt": GPT_DEFAULTS, "slingshot": SLINGSHOT_DEFAULTS}
DEFAULT_CONFIGS = (
    "gpt:lr=3e-2", "gpt:lr=1e-1", "gpt:lr=3e-1", "gpt:lr=1e-1,eps=1e-6",
    "gpt:lr=1e-1,batch=4", "gpt:lr=1e-1,layers=8", "gpt:lr=3e-2,embd=256,heads=8",
    "gpt:lr=1e-2,steps=6000",
    "slingshot:lr=3e-4", "slingshot:lr=1e-3", "slingshot:lr=3e-3", "slingshot:lr=1e-2",
)


def parse_config(text: str) -> dict:
    """'gpt:lr=1e-1,batch=4' -> {"family": "gpt", **GPT_DEFAULTS, "lr": 0.1, "batch": 4}."""
    family, _, tail = text.partition(":")
    if family not in DEFAULTS:
        raise argparse.ArgumentTypeError(f"--configs: family must be one of {list(DEFAULTS)}, "
                                         f"got {family!r} in {text!r}")
    config = {"family": family, **DEFAULTS[family]}
    for item in filter(None, tail.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in DEFAULTS[family]:
            raise argparse.ArgumentTypeError(
                f"--configs: {item!r} is not key=value with a key of {list(DEFAULTS[family])}")
        kind = type(DEFAULTS[family][key])
        config[key] = kind(float(value)) if kind is int else kind(value)
    return config


def name(config: dict) -> str:
    """The config by what differs from its family's defaults, e.g. 'gpt:lr=0.1,batch=4'."""
    changed = [f"{k}={v:g}" for k, v in config.items()
               if k != "family" and v != DEFAULTS[config["family"]][k]]
    return f"{config['family']}:" + ",".join(changed)


def build_task(config: dict):
    if config["family"] == "slingshot":
        return Slingshot(steps=config["steps"], lr=config["lr"], train_size=config["train"],
                         hidden=config["hidden"], layers=config["layers"], eps=config["eps"])
    return CharLM(name="gpt-stability", preset="small", steps=config["steps"],
                  lr=config["lr"], min_lr=config["lr"], warmup=config["warmup"],
                  batch_size=config["batch"], betas=(0.9, config["beta2"]), eps=config["eps"],
                  max_grad_norm=config["clip"] or None, eval_every=config["steps"],
                  eval_iters=10, model_overrides={"n_layer": config["layers"],
                                                  "n_embd": config["embd"],
                                                  "n_head": config["heads"]})


def train(config: dict, seed: int) -> dict:
    torch.set_num_threads(1)  # one core per worker
    record = run_one(build_task(config), "adamw", seed, progress=False)
    losses = [loss for _, loss in record.train_loss]
    ratios = [r for r in loss_ratios(losses) if math.isfinite(r)]
    return {"config": name(config), "seed": seed, "status": record.status,
            "steps_done": len(record.train_loss) and record.train_loss[-1][0] + 1,
            "val_loss": record.final.get("loss"), "train_loss": record.final.get("train_loss"),
            "spikes_2x": record.spikes, "olmo_loss": record.spike_score_loss,
            "olmo_grad_norm": record.spike_score_grad_norm,
            "max_ratio": max(ratios, default=None), "wall_time": record.wall_time}


def table(rows: list[dict]) -> list[str]:
    def cell(value, fmt):
        return "—" if value is None else format(value, fmt)

    lines = ["| config | seed | status | val loss | 2x spikes | OLMo score (loss) | "
             "OLMo score (grad norm) | max ratio | minutes |", "|---" * 9 + "|"]
    for r in sorted(rows, key=lambda r: (r["config"], r["seed"])):
        lines.append(f"| {r['config']} | {r['seed']} | {r['status']} | "
                     f"{cell(r['val_loss'], '.4f')} | {r['spikes_2x']} | "
                     f"{cell(r['olmo_loss'], '.4f')} | {cell(r['olmo_grad_norm'], '.4f')} | "
                     f"{cell(r['max_ratio'], '.3g')} | {r['wall_time'] / 60:.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", type=parse_config,
                        default=[parse_config(c) for c in DEFAULT_CONFIGS])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--resume", action="store_true", help="skip rows already recorded")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    stem = result_stem(args.out, "stability_search", torch.device("cpu"))
    stem.parent.mkdir(parents=True, exist_ok=True)
    rows_file = stem.with_suffix(".jsonl")
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()
            if line.strip()] if rows_file.exists() else []
    if not args.resume:
        rows = []
        rows_file.write_text("")
    done = {(r["config"], r["seed"]) for r in rows}
    todo = [c for c in args.configs if (name(c), args.seed) not in done]
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(train, config, args.seed) for config in todo]
        for future in as_completed(futures):
            row = future.result()
            rows.append(row)
            with rows_file.open("a") as out:  # one whole line per finished run
                out.write(json.dumps(row) + "\n")
            print(f"{row['config']} seed {row['seed']}: {row['status']}, olmo "
                  f"{row['olmo_loss']}, 2x {row['spikes_2x']}", flush=True)
    write_result(stem, {"machine": machine(torch.device("cpu")), "rows": rows}, table(rows))


if __name__ == "__main__":
    main()
