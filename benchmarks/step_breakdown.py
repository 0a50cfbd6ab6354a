"""Where DEO's training-step time goes on the character GPT: probe steps, cheap steps, the
AdamW step and one forward+backward, each timed on its own (medians, steps interleaved).

From the medians it also gives the throughput efficiency they imply at f = 5, 10, 20 (the
measure of throughput.py): DEO's mean step is ((f - 1) cheap + probe) / f against the ideal
AdamW step + t_fb / f.

It also times the floor of any cheap step: the bare correction, torch.dot per tensor and one
``_foreach_addcmul_`` (deo.corrections.paper_correction_) on the gradients an AdamW step has
just consumed, against a cold N, as in a real step. Its median bounds the efficiency from
above at every f: AdamW step / (AdamW step + bare correction).

On a machine whose speed drifts by several percent from minute to minute, medians of single
interleaved steps are a steadier estimate than windows of steps.

    python benchmarks/step_breakdown.py [--interval 10] [--rounds 6] [--device cpu|cuda]
        [--preset small|complex] [--batch-size 12] [--amp]
Writes benchmarks/results/step_breakdown_<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
from functools import partial

import torch
from common import machine, result_stem, seconds_per_call, write_result
from throughput import Trainer

from deo.corrections import paper_correction_


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--rotation", default="oja")
    parser.add_argument("--preset", default="small", help="GPT size: small or complex")
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--out", default=None,
                        help="file stem (default results/step_breakdown_<device>)")
    args = parser.parse_args()
    device = torch.device(args.device)
    task = {"preset": args.preset, "data": None, "batch_size": args.batch_size}
    dimer = Trainer(task, device, "deo", args.amp, interval=args.interval,
                    rotation=args.rotation)
    base = Trainer(task, device, "base", args.amp)
    for _ in range(args.interval + 2):
        dimer.train_step()
        base.train_step()
    times: dict[str, list[float]] = {"probe step": [], "cheap step": [], "AdamW step": [],
                                     "bare correction": [], "forward+backward": []}
    for _ in range(args.rounds * args.interval):
        kind = "probe step" if dimer.step_index % args.interval == 0 else "cheap step"
        times[kind].append(seconds_per_call(dimer.train_step, device, 1))
        times["AdamW step"].append(seconds_per_call(base.train_step, device, 1))
        bare = partial(paper_correction_, [p.grad for p in base.params], dimer.opt.direction, 0.0)
        times["bare correction"].append(seconds_per_call(bare, device, 1))
        times["forward+backward"].append(seconds_per_call(base.closure, device, 1))
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    derived = {"cheap step beyond AdamW": ms["cheap step"] - ms["AdamW step"],
               "probe beyond cheap step and one forward+backward":
                   ms["probe step"] - ms["cheap step"] - ms["forward+backward"],
               "efficiency cap of the bare correction":
                   ms["AdamW step"] / (ms["AdamW step"] + ms["bare correction"])}
    efficiency = {f: implied_efficiency(ms, f) for f in (5, 10, 20)}
    table = ["| what | ms |", "|---|---|"]
    table += [f"| {k} | {v:.3f} |" if k.startswith("efficiency") else f"| {k} | {v:.2f} |"
              for k, v in {**ms, **derived}.items()]
    table += ["", "| f | DEO step (mean) | ideal step | efficiency |", "|---|---|---|---|"]
    table += [f"| {f} | {e['deo_ms']:.2f} | {e['ideal_ms']:.2f} | {e['efficiency']:.3f} |"
              for f, e in efficiency.items()]
    write_result(result_stem(args.out, "step_breakdown", device),
                 {"machine": machine(device), "settings": vars(args), "ms": ms,
                  "derived_ms": derived, "samples": {k: len(v) for k, v in times.items()},
                  "implied_efficiency": efficiency}, table)


def implied_efficiency(ms: dict[str, float], interval: int) -> dict[str, float]:
    """DEO's mean step at probe interval f from the medians, against the ideal."""
    deo_ms = ((interval - 1) * ms["cheap step"] + ms["probe step"]) / interval
    ideal_ms = ms["AdamW step"] + ms["forward+backward"] / interval
    return {"deo_ms": deo_ms, "ideal_ms": ideal_ms, "efficiency": ideal_ms / deo_ms}


if __name__ == "__main__":
    main()
