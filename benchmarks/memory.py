"""Memory of DEO against its base optimizer (AdamW), in units of the parameters' bytes.

The model is a stack of wide linear layers (``--params``, default 50M) fed a tiny batch, so
parameters, gradients and optimizer state dominate and activations are negligible. Each
optimizer runs in a fresh process (a clean resident set) for ``interval`` + 2 steps, one of
them a probe step. Reported, relative to the parameter bytes P:

* ``persistent``: DEO's own state that lives across steps (N, and the rotation rule's carried
  vectors), counted exactly from the tensors in ``opt.state`` that the base does not own;
* ``transient``: the extra memory at the peak of a probe step beyond the base's peak and
  DEO's persistent state. On CUDA from torch.cuda.max_memory_allocated (exact); on CPU from
  the process's peak resident set (ru_maxrss), an upper bound, since the allocator keeps
  freed pages.

Targets (issue 5): persistent <= 1.0 P (0.5 P with a bf16 N), transient <= 2.0 P.

    python benchmarks/memory.py [--device cpu|cuda] [--params 5e7]
Writes benchmarks/results/memory_<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys

import torch
from common import machine, result_stem, write_result

import deo

CONFIGS = {
    "adamw": {},
    "deo (oja)": {"rotation": "oja"},
    "deo (oja, bf16 N)": {"rotation": "oja", "direction_dtype": "bfloat16"},
    "deo (ritz)": {"rotation": "ritz"},
    "deo (ritz, bf16 N)": {"rotation": "ritz", "direction_dtype": "bfloat16"},
}
INTERVAL = 4


def build(params: int, device: torch.device) -> torch.nn.Module:
    width = 2048
    layers = max(1, round(params / (width * width)))
    return torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False)
                                 for _ in range(layers)]).to(device)


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def measure_one(config: str, params: int, device: torch.device) -> dict:
    """Run in a fresh process: train a few steps, return byte counts."""
    torch.manual_seed(0)
    model = build(params, device)
    x = torch.randn(4, 2048, device=device)
    settings = dict(CONFIGS[config])
    if "direction_dtype" in settings:
        settings["direction_dtype"] = getattr(torch, settings["direction_dtype"])
    if config == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    else:
        opt = deo.DEO(model.parameters(), lr=1e-4, interval=INTERVAL, **settings)

    def closure():
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        return loss
    for _ in range(INTERVAL + 2):  # probes at 0 and INTERVAL; the peak includes both
        if isinstance(opt, deo.DEO):
            opt.step(closure)
        else:
            closure()
            opt.step()
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    state = opt.state if isinstance(opt, deo.DEO) else {}
    persistent = sum(t.numel() * t.element_size() for s in state.values()
                     for t in s.values() if isinstance(t, torch.Tensor))
    return {"config": config, "param_bytes": param_bytes, "persistent_bytes": persistent,
            "peak_bytes": peak_bytes(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--params", type=float, default=5e7)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.one is not None:
        print(json.dumps(measure_one(args.one, int(args.params), device)))
        return
    rows = []
    for config in CONFIGS:
        child = subprocess.run([sys.executable, __file__, "--device", args.device, "--params",
                                str(args.params), "--one", config],
                               capture_output=True, text=True, check=True)
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    base = rows[0]
    for row in rows:
        p = row["param_bytes"]
        row["persistent"] = row["persistent_bytes"] / p
        row["peak_extra"] = (row["peak_bytes"] - base["peak_bytes"]) / p
        row["transient"] = row["peak_extra"] - row["persistent"]
    write(rows, args, device)


def write(rows, args, device) -> None:
    about = {**machine(device), "peak_measure": "max_memory_allocated"
             if device.type == "cuda" else "ru_maxrss (upper bound)"}
    stem = result_stem(args.out, "memory", device)
    p = rows[0]["param_bytes"]
    table = [f"Parameters: {p / 4 / 1e6:.1f}M float32 ({p / 2**20:.0f} MiB = 1 P)", "",
             "| optimizer | persistent (x P) | transient at probe peak (x P) | peak (MiB) |",
             "|---|---|---|---|"]
    table += [f"| {r['config']} | {r['persistent']:.2f} | "
              f"{_fmt(r['transient']) if r['config'] != 'adamw' else '-'} | "
              f"{r['peak_bytes'] / 2**20:.0f} |" for r in rows]
    write_result(stem, {"machine": about, "rows": rows}, table)


def _fmt(x: float) -> str:
    return f"{x:.2f}" if math.isfinite(x) else "-"


if __name__ == "__main__":
    main()
