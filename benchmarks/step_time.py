"""Optimizer-step microbenchmark: DEO's cheap step against the bare base step.

Parameters shaped like a stack of square layers with biases (10 matrices, 10 vectors) at
1M, 10M and 100M parameters; gradients are given (no forward or backward); each sample is
the median over ``--samples`` timed blocks of steps after warm-up, base and DEO interleaved
so that drifting machine load hits both alike. DEO runs with ``alpha=2``: the component of g
along N flips sign each step instead of growing 4x (as alpha=5 would, on gradients that are
never recomputed here); the work per step does not depend on alpha.

Bases: AdamW (foreach), AdamW (fused, where the device has it), SGD with momentum (foreach).
DEO variants: the default (float32 N), ``direction_dtype=torch.bfloat16`` and, with
``--compile``, ``compile_step=True`` (with either N) next to a ``torch.compile``'d bare base
step ("x base" of a compiled variant is relative to the compiled base; a fused base step is
one opaque kernel, so there only DEO's correction is compiled).

    python benchmarks/step_time.py [--device cpu|cuda] [--sizes 1e6 1e7 1e8] [--compile]
Writes benchmarks/results/step_time_<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable

import torch
from common import machine, result_stem, seconds_per_call, write_result

import deo

LAYERS = 10


def layer_shapes(size: int) -> list[tuple[int, ...]]:
    width = int(math.sqrt(size / LAYERS))
    return [s for _ in range(LAYERS) for s in ((width, width), (width,))]


def make_params(shapes, device, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.randn(shape, generator=gen).to(device).requires_grad_()
        p.grad = torch.randn(shape, generator=gen).to(device) * 1e-3
        params.append(p)
    return params


def bases(device: torch.device) -> dict[str, tuple[type, dict]]:
    out = {"adamw-foreach": (torch.optim.AdamW, {"lr": 1e-3, "foreach": True}),
           "sgd-momentum": (torch.optim.SGD, {"lr": 1e-3, "momentum": 0.9, "foreach": True})}
    try:  # fused AdamW: CUDA, and CPU since torch 2.4
        probe = torch.zeros(2, device=device, requires_grad=True)
        probe.grad = torch.zeros(2, device=device)
        torch.optim.AdamW([probe], fused=True).step()
        out["adamw-fused"] = (torch.optim.AdamW, {"lr": 1e-3, "fused": True})
    except (RuntimeError, ValueError):
        pass
    return out


def deo_after_first_probe(params, base_cls, kwargs, **deo_kwargs) -> deo.DEO:
    """A DEO whose next steps are all cheap: the probe at step 0 is taken here, on the given
    gradients (the closure hands back the same gradients, so H N = 0 and N stays put)."""
    grads = [p.grad for p in params]
    opt = deo.DEO(params, base=base_cls, alpha=2.0, interval=10**9, displacement=1e-3,
                  **deo_kwargs, **kwargs)

    def closure():
        for p, g in zip(params, grads):
            p.grad = g
        return torch.zeros(())
    opt.step(closure)
    return opt


def measure(steps: dict[str, Callable[[], None]], device, warmup: int, samples: int,
            block: int) -> dict[str, float]:
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(samples):
        for name, step in steps.items():
            times[name].append(seconds_per_call(step, device, block))
    return {name: statistics.median(t) for name, t in times.items()}


def contenders(size: int, base_cls, kwargs, device, compile_: bool):
    """name -> a zero-argument step, each over its own copy of the parameters."""
    shapes = layer_shapes(size)

    def deo_step(**deo_kwargs):
        return deo_after_first_probe(make_params(shapes, device, 0), base_cls, kwargs,
                                     **deo_kwargs).step
    steps = {"base": base_cls(make_params(shapes, device, 0), **kwargs).step,
             "deo": deo_step(),
             "deo-bf16N": deo_step(direction_dtype=torch.bfloat16)}
    if compile_:
        if "fused" not in kwargs:  # a fused step is one opaque kernel: nothing to compile
            steps["base-compiled"] = torch.compile(
                base_cls(make_params(shapes, device, 0), **kwargs).step)
        steps["deo-compiled"] = deo_step(compile_step=True)
        steps["deo-compiled-bf16N"] = deo_step(compile_step=True, direction_dtype=torch.bfloat16)
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7, 1e8])
    parser.add_argument("--samples", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time compile_step=True")
    parser.add_argument("--compile-sizes", type=float, nargs="*", default=None,
                        help="with --compile: only at these sizes (default: all)")
    parser.add_argument("--compile-bases", nargs="*", default=None,
                        help="with --compile: only for these bases (default: all)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default=None, help="file stem (default results/step_time_<dev>)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for size in map(int, args.sizes):
        # GPU steps at 1M take microseconds: time blocks of steps, not single ones
        block = 1 if device.type == "cpu" else max(1, int(2e8 // size))
        for base_name, (base_cls, kwargs) in bases(device).items():
            compile_here = args.compile and (
                args.compile_sizes is None or size in [int(s) for s in args.compile_sizes]) and (
                args.compile_bases is None or base_name in args.compile_bases)
            steps = contenders(size, base_cls, kwargs, device, compile_here)
            medians = measure(steps, device, args.warmup, args.samples, block)
            for name, seconds in medians.items():
                reference = medians.get("base-compiled" if "compiled" in name else "base",
                                        medians["base"])
                rows.append({"params": size, "base": base_name, "variant": name,
                             "ms": seconds * 1e3, "x_base": seconds / reference})
                print(rows[-1], flush=True)
            del steps
        add_fused_reference(rows, size)
        write(rows, args, device)  # after every size: a run cut short keeps what it measured


def add_fused_reference(rows: list[dict], size: int) -> None:
    """Every AdamW row of this size also relative to the fused AdamW step (the GPU target)."""
    fused = [r["ms"] for r in rows if r["params"] == size and r["base"] == "adamw-fused"
             and r["variant"] == "base"]
    for r in rows:
        if r["params"] == size and r["base"].startswith("adamw") and fused:
            r["x_fused_adamw"] = r["ms"] / fused[0]


def write(rows, args, device) -> None:
    stem = result_stem(args.out, "step_time", device)
    table = ["| params | base | variant | ms / step | x base | x fused AdamW |",
             "|---|---|---|---|---|---|"]
    table += [f"| {r['params']:.0e} | {r['base']} | {r['variant']} | {r['ms']:.3f} | "
              f"{r['x_base']:.3f} | {r.get('x_fused_adamw', float('nan')):.3f} |"
              for r in rows]
    write_result(stem, {"machine": machine(device), "rows": rows}, table)


if __name__ == "__main__":
    main()
