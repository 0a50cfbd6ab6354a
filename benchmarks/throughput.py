"""End-to-end training throughput of the character GPT: DEO against its base, and the ideal.

One training step is the runner's: closure (zero_grad, forward, backward), gradient clipping
at 1.0 and the optimizer step. The ideal throughput of DEO relative to its base (issue 5),

    ideal = 1 / (1 + p * t_fb / (interval * t_step)),

charges DEO exactly one extra forward+backward (t_fb, timed alone) per ``interval`` steps
(p = probes_per_update = 1) on top of a whole base step (t_step), i.e. a free cheap step and a
free rotation. ``efficiency`` = (DEO tokens/s / base tokens/s) / ideal; 1.0 is the limit.

Timing: ``--rounds`` rounds; in each, every DEO contender trains ``--steps`` steps (a
multiple of 20, so probe steps come at their real frequency) right after AdamW trains as many,
both from where they left off. The relative throughput is the median over rounds of these
paired ratios, so load that drifts over minutes cancels out.

    python benchmarks/throughput.py [--device cpu|cuda] [--preset small] [--amp]
Writes benchmarks/results/throughput_<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics

import torch
from common import machine, result_stem, seconds_per_call, write_result

import deo
from deo.bench.lm import CharLM


class Trainer:
    """One model and optimizer, trained step by step on the CharLM task's batches."""

    def __init__(self, task_kwargs, device, optimizer: str, amp: bool, **deo_kwargs):
        self.task = CharLM(**task_kwargs)
        self.task.setup(0, device)
        self.device, self.amp, self.step_index = device, amp, 0
        groups = self.task.param_groups()
        base_kwargs = {"lr": 1e-3, "betas": (0.9, 0.99),
                       "fused" if device.type == "cuda" else "foreach": True}
        if optimizer == "base":
            self.opt = torch.optim.AdamW(groups, **base_kwargs)
        else:
            self.opt = deo.DEO(groups, base=torch.optim.AdamW, max_grad_norm=1.0,
                               **deo_kwargs, **base_kwargs)
        self.params = [p for g in groups for p in g["params"]]

    def closure(self):
        self.opt.zero_grad(set_to_none=True)
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp
                    else contextlib.nullcontext())
        with autocast:
            loss = self.task.loss_fn(self.step_index)()
        loss.backward()
        return loss

    def train_step(self) -> None:
        if isinstance(self.opt, deo.DEO):
            self.opt.step(self.closure)
        else:
            self.closure()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.opt.step()
        self.step_index += 1

    def timed(self, steps: int, what) -> float:
        return seconds_per_call(what, self.device, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="small", help="GPT size: small or complex")
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--intervals", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--compile-step", action="store_true",
                        help="also DEO (oja) with compile_step=True at each interval")
    parser.add_argument("--data", default=None)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    task_kwargs = {"preset": args.preset, "data": args.data, "batch_size": args.batch_size}
    trainers = {"adamw": Trainer(task_kwargs, device, "base", args.amp)}
    for interval in args.intervals:
        for rotation in ("oja", "ritz"):
            trainers[f"deo-{rotation} f={interval}"] = Trainer(
                task_kwargs, device, "deo", args.amp, interval=interval, rotation=rotation)
        if args.compile_step:
            trainers[f"deo-oja-compiled f={interval}"] = Trainer(
                task_kwargs, device, "deo", args.amp, interval=interval, compile_step=True)
    base = trainers["adamw"]
    for trainer in trainers.values():  # warm-up (and the first probe)
        trainer.timed(max(5, args.steps // 4), trainer.train_step)
    t_fb, base_times = [], []
    ratios: dict[str, list[float]] = {name: [] for name in trainers if name != "adamw"}
    seconds: dict[str, list[float]] = {name: [] for name in ratios}
    for _ in range(args.rounds):
        t_fb.append(base.timed(args.steps // 4, base.closure))
        for name in ratios:  # each DEO window right after an AdamW window: paired ratios
            base_times.append(base.timed(args.steps, base.train_step))
            seconds[name].append(trainers[name].timed(args.steps, trainers[name].train_step))
            ratios[name].append(base_times[-1] / seconds[name][-1])
    t_fb = statistics.median(t_fb)
    t_step = statistics.median(base_times)
    tokens = args.batch_size * base.task.block_size
    rows = [{"optimizer": "adamw", "interval": None, "seconds_per_step": t_step,
             "tokens_per_s": tokens / t_step, "relative": 1.0, "ideal": 1.0, "efficiency": 1.0}]
    for name, paired in ratios.items():
        interval = int(name.split("f=")[1])
        relative = statistics.median(paired)
        ideal = 1 / (1 + t_fb / (interval * t_step))
        per_step = statistics.median(seconds[name])
        rows.append({"optimizer": name.split(" ")[0], "interval": interval,
                     "seconds_per_step": per_step, "tokens_per_s": tokens / per_step,
                     "relative": relative, "ideal": ideal, "efficiency": relative / ideal,
                     "relative_per_round": paired})
    write(rows, args, device, t_fb, t_step, sum(p.numel() for p in base.params))


def write(rows, args, device, t_fb, t_step, params) -> None:
    setting = {"preset": args.preset, "params": params, "batch_size": args.batch_size,
               "amp_bf16": args.amp, "t_fb_ms": t_fb * 1e3, "t_step_ms": t_step * 1e3,
               "steps_per_round": args.steps, "rounds": args.rounds}
    stem = result_stem(args.out, "throughput", device)
    table = [f"Setting: {setting}", "",
             "| optimizer | interval | ms / step | tokens / s | x adamw | ideal | efficiency |",
             "|---|---|---|---|---|---|---|"]
    table += [f"| {r['optimizer']} | {r['interval'] or '-'} | {r['seconds_per_step'] * 1e3:.2f} "
              f"| {r['tokens_per_s']:.0f} | {r['relative']:.3f} | {r['ideal']:.3f} | "
              f"{r['efficiency']:.3f} |" for r in rows]
    write_result(stem, {"machine": machine(device), "setting": setting, "rows": rows}, table)


if __name__ == "__main__":
    main()
