"""Does flushing denormal floats change a bench run, and how much time does it save?

`deo bench --flush-denormal` makes CPU arithmetic treat denormal floats (below 1.18e-38 in
float32) as zero. Some CPU runs slow down several times midway because their activations
decay into denormals (docs/stability.md); flushing removes that cost but may change the
numbers. This reruns chosen runs of a preset with flushing and sets each beside the record
of the same run without it, taken from a folder that ran without it:

* same losses: whether the training-loss series is the same to the last bit, else the first
  step where the two differ;
* final validation loss, without and with;
* wall time, without and with (comparable only under the same load: same workers, threads;
  the table's machine line gives the threads of each flushed run).

    python benchmarks/denormal_check.py --reference benchmarks/results/stability-gpt-lr-cpu \\
        --run 'gpt-stability-lr=0.001|adamw|0' --run 'gpt-stability-lr=0.001|adopt|0' \\
        [--preset stability-gpt-lr] [--workers 2] [--data PATH]

The flushed runs' records go to benchmarks/results/denormal_check_cpu/ (an interrupted check
resumes there); the comparison beside it, in denormal_check_cpu.{json,md} (--out: elsewhere).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from common import RESULTS, machine, write_result

from deo.bench.presets import PRESETS, build_preset
from deo.bench.runner import is_finished, run_bench, threads_per_worker
from deo.bench.task import RESULTS_FILE, read_results, run_key
from deo.cli import _at_least  # the CLI's own check of --workers


def first_difference(a: list, b: list) -> int | None:
    """The first recorded step where two [step, loss] series differ (None: identical, NaN
    equal to NaN, as two runs that diverged alike)."""
    for (step, x), (_, y) in zip(a, b):
        if x != y and not (math.isnan(x) and math.isnan(y)):
            return step
    if len(a) != len(b):
        return max(a, b, key=len)[min(len(a), len(b))][0]
    return None


def records_by_key(folder: Path) -> dict[str, dict]:
    """The finished runs of a bench folder (runs that raised are not results)."""
    path = folder / RESULTS_FILE
    if not path.is_file():
        raise SystemExit(f"denormal_check: no {RESULTS_FILE} in {str(folder)!r}")
    records, _, _ = read_results(path)
    return {r["key"]: r for r in records if is_finished(r)}


def same_run(before: dict, after: dict) -> bool:
    """Whether ``after`` is ``before`` rerun with denormals flushed throughout: the same task
    and optimizer settings (a folder reused with another --data is not)."""
    return (after["config"].get("task") == before["config"].get("task")
            and after["config"].get("optimizer") == before["config"].get("optimizer")
            and after["config"].get("flush_denormal_from_step") == 0
            and "flush_denormal_until_step" not in after["config"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="stability-gpt-lr", choices=PRESETS)
    parser.add_argument("--reference", type=Path, required=True,
                        help="a bench folder whose runs did not flush denormals")
    parser.add_argument("--run", action="append", required=True, metavar="TASK|OPTIMIZER|SEED",
                        help="a run key of the reference folder (repeatable)")
    parser.add_argument("--data", default=None, help="the preset's text file, as in the reference")
    parser.add_argument("--workers", type=_at_least(1), default=1,
                        help="runs at a time, as deo bench --workers (default 1)")
    parser.add_argument("--out", type=Path, default=RESULTS / "denormal_check_cpu")
    args = parser.parse_args()
    reference = records_by_key(args.reference)
    factories = {factory().name: factory for factory in build_preset(args.preset, args.data).tasks}
    runs = []
    for key in dict.fromkeys(args.run):  # a key given twice runs once
        parts = key.split("|")
        if len(parts) != 3 or parts[0] not in factories or not parts[2].isdecimal():
            parser.error(f"--run: expected TASK|OPTIMIZER|SEED with TASK one of "
                         f"{sorted(factories)}, got {key!r}")
        if key not in reference:
            parser.error(f"--run: {key!r} is not a finished run of {str(args.reference)!r}")
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
        before, after = reference[key], flushed.get(key)
        if after is None or not same_run(before, after):
            raise SystemExit(f"denormal_check: {str(args.out)!r} holds no finished run {key!r} "
                             f"with the reference's settings and denormals flushed throughout "
                             f"(an error run, another --data, or an older record); see "
                             f"{RESULTS_FILE} there, or choose another --out")
        differs = first_difference(before["train_loss"], after["train_loss"])
        row = {"run": key, "first_difference": differs,
               "final_loss": [before["final"].get("loss"), after["final"].get("loss")],
               "wall_time": [before["wall_time"], after["wall_time"]]}
        rows.append(row)
        same = "yes, bit for bit" if differs is None else f"no, from step {differs}"
        losses = " | ".join("no final loss" if x is None else f"{x:.4f}"
                            for x in row["final_loss"])
        table.append(f"| {key} | {same} | {losses}"
                     f" | {before['wall_time'] / 60:.1f} | {after['wall_time'] / 60:.1f} |")
    write_result(args.out, {"machine": {**machine(torch.device("cpu")),
                                        "threads": threads_per_worker(args.workers)},
                            "runs": rows}, table)


if __name__ == "__main__":
    main()
