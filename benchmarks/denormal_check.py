"""Does flushing denormal floats change a bench run, and how much time does it save?

`deo bench --flush-denormal` makes CPU arithmetic treat denormal floats (below 1.2e-38 in
float32) as zero. Some CPU runs slow down several times midway because their activations
decay into denormals (docs/stability.md); flushing removes that cost but may change the
numbers. This reruns chosen runs of a preset with flushing and sets each beside the record
of the same run without it, taken from a folder that ran without it:

* same losses: whether the training-loss series is the same to the last bit, else the first
  step where the two differ;
* final validation loss, without and with;
* wall time, without and with (comparable only under the same load: same workers, threads).

    python benchmarks/denormal_check.py --reference benchmarks/results/stability-gpt-lr-cpu \\
        --run 'gpt-stability-lr=0.001|adamw|0' --run 'gpt-stability-lr=0.001|adopt|0' \\
        [--preset stability-gpt-lr] [--workers 2] [--data PATH]

The flushed runs' records go to benchmarks/results/denormal_check_cpu/ (an interrupted check
resumes there); the comparison beside it, in denormal_check_cpu.{json,md} (--out: elsewhere).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import RESULTS, machine, write_result

from deo.bench.presets import PRESETS, build_preset
from deo.bench.runner import run_bench
from deo.bench.task import RESULTS_FILE, read_results, run_key


def first_difference(a: list, b: list) -> int | None:
    """The first recorded step where two [step, loss] series differ (None: identical)."""
    for (step, x), (_, y) in zip(a, b):
        if x != y:
            return step
    if len(a) != len(b):
        return min(len(a), len(b))
    return None


def records_by_key(folder: Path) -> dict[str, dict]:
    path = folder / RESULTS_FILE
    if not path.is_file():
        raise SystemExit(f"denormal_check: no {RESULTS_FILE} in {str(folder)!r}")
    records, _, _ = read_results(path)
    return {r["key"]: r for r in records}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="stability-gpt-lr", choices=PRESETS)
    parser.add_argument("--reference", type=Path, required=True,
                        help="a bench folder whose runs did not flush denormals")
    parser.add_argument("--run", action="append", required=True, metavar="TASK|OPTIMIZER|SEED",
                        help="a run key of the reference folder (repeatable)")
    parser.add_argument("--data", default=None, help="the preset's text file, as in the reference")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "denormal_check_cpu")
    args = parser.parse_args()
    reference = records_by_key(args.reference)
    factories = {factory().name: factory for factory in build_preset(args.preset, args.data).tasks}
    runs = []
    for key in args.run:
        parts = key.split("|")
        if len(parts) != 3 or parts[0] not in factories or not parts[2].isdigit():
            parser.error(f"--run: expected TASK|OPTIMIZER|SEED with TASK one of "
                         f"{sorted(factories)}, got {key!r}")
        if key not in reference:
            parser.error(f"--run: {key!r} is not a run of {str(args.reference)!r}")
        if "flush_denormal_from_step" in reference[key]["config"]:
            parser.error(f"--run: {key!r} flushed denormals in the reference already")
        runs.append((factories[parts[0]], parts[1], int(parts[2])))
    run_bench(runs, args.out, preset=args.preset, resume=True, progress=False,
              workers=args.workers, flush_denormal=True)
    flushed = records_by_key(args.out)
    rows, table = [], ["| run | same losses | final loss without | with | minutes without | with |",
                       "|---|---|---|---|---|---|"]
    for make_task, optimizer, seed in runs:
        key = run_key(make_task().name, optimizer, seed)
        before, after = reference[key], flushed[key]
        differs = first_difference(before["train_loss"], after["train_loss"])
        row = {"run": key, "first_difference": differs,
               "final_loss": [before["final"].get("loss"), after["final"].get("loss")],
               "wall_time": [before["wall_time"], after["wall_time"]]}
        rows.append(row)
        same = "yes, bit for bit" if differs is None else f"no, from step {differs}"
        losses = " | ".join("diverged" if x is None else f"{x:.4f}" for x in row["final_loss"])
        table.append(f"| {key} | {same} | {losses}"
                     f" | {before['wall_time'] / 60:.1f} | {after['wall_time'] / 60:.1f} |")
    write_result(args.out,
                 {"machine": machine(torch.device("cpu")), "runs": rows}, table)


if __name__ == "__main__":
    main()
