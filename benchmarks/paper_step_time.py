"""Wall time per training iteration of every bench optimizer on the paper's small GPT.

The paper-small preset takes hours on a CPU; this measures what each optimizer costs per
iteration in that exact setting (batch 12, block 64, 0.80M parameters, clipping 1.0), with
the runner's own loop, over a short window after warm-up: DEO's probe steps (one in
``interval``) are included at their real frequency.

    python benchmarks/paper_step_time.py [--steps 60] [--data PATH]
Writes benchmarks/results/paper_step_time.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from deo.bench.lm import CharLM
from deo.bench.optimizers import NAMES
from deo.bench.runner import run_one

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--data", default=None)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in NAMES:
        task = CharLM("gpt-small", preset="small", data=args.data, steps=args.steps,
                      eval_every=10**9, eval_iters=1)
        record = run_one(task, name, seed=0, progress=False)
        rows.append({"optimizer": name, "seconds_per_step": record.seconds_per_step,
                     "gradient_evaluations_per_step":
                         record.gradient_evaluations / len(record.train_loss)})
        print(rows[-1])
    adamw = next(r["seconds_per_step"] for r in rows if r["optimizer"] == "adamw")
    lines = ["| optimizer | s / iteration | x adamw | gradient evaluations / iteration |",
             "|---|---|---|---|"]
    lines += [f"| {r['optimizer']} | {r['seconds_per_step']:.4f} | "
              f"{r['seconds_per_step'] / adamw:.2f} | {r['gradient_evaluations_per_step']:.2f} |"
              for r in rows]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "paper_step_time.json").write_text(json.dumps(
        {"steps": args.steps, "threads": args.threads, "rows": rows}, indent=1))
    (RESULTS / "paper_step_time.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
