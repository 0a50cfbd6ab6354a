"""The stability metrics of a `deo bench` results folder, side by side (docs/stability.md).

For each optimizer, mean ± spread (half the range) over its seeds: final and best held-out
loss, the bench's 2x-rule spike count, OLMo 2's spike score on the loss and on the gradient
norm, divergences, gradient evaluations and minutes per run. For DEO runs that recorded the
probe's curvature, the early-warning read-out (deo.bench.stability.early_warning: flags
where the curvature exceeds 2x the mean |C| of the 10 probes before, against the run's own
2x-rule spikes, lead 20 to 200 steps).

    python benchmarks/stability_table.py benchmarks/results/stability-slingshot-cpu
Writes <folder>/stability.md.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

from deo.bench.stability import curvature_flags, early_warning, lr_sensitivity
from deo.bench.task import RESULTS_FILE, read_results


def spread(values: list[float], digits: str = ".3g") -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "—"
    mean = statistics.fmean(values)
    half = (max(values) - min(values)) / 2
    return f"{mean:{digits}} ± {half:{digits}}" if len(values) > 1 else f"{mean:{digits}}"


def row(name: str, runs: list[dict]) -> str:
    ok = [r for r in runs if r.get("status") == "ok"]
    best = [min((e["loss"] for e in r.get("evals", []) if "loss" in e), default=math.nan)
            for r in ok]
    warnings = [early_warning(curvature_flags(r["curvature"]), r["spike_steps"]["2x"])
                for r in ok if r.get("curvature") and r.get("spike_steps")]
    warning = "—" if not warnings else (
        f"P {spread([w['precision'] for w in warnings], '.2f')}, "
        f"R {spread([w['recall'] for w in warnings], '.2f')}, "
        f"lead {spread([w['lead'] for w in warnings], '.0f')}")
    return (f"| {name} | {len(runs)} | {spread([r['final'].get('loss') for r in ok], '.4f')} | "
            f"{spread(best, '.4f')} | {spread([r['spikes'] for r in ok])} | "
            f"{spread([r.get('spike_score_loss') for r in ok], '.4f')} | "
            f"{spread([r.get('spike_score_grad_norm') for r in ok], '.4f')} | "
            f"{sum(r.get('status') == 'diverged' for r in runs)} | "
            f"{spread([r['gradient_evaluations'] for r in ok])} | "
            f"{spread([r['wall_time'] / 60 for r in ok], '.1f')} | {warning} |")


def sensitivity_tables(by_task: dict[str, dict[str, list[dict]]]) -> list[str]:
    """Wortsman et al.'s LR sensitivity of each optimizer over tasks named '<setting>-lr=<v>':
    the mean over seeds of the final loss at each lr (a diverged run counts as the initial
    loss), against the mean initial loss."""
    grids: dict[str, dict[float, dict[str, list[dict]]]] = {}
    for task, by_optimizer in by_task.items():
        setting, sep, lr = task.rpartition("-lr=")
        if sep:
            grids.setdefault(setting, {})[float(lr)] = by_optimizer
    lines = []
    for setting, grid in grids.items():
        lrs = sorted(grid)
        names = sorted({name for runs in grid.values() for name in runs})
        lines += [f"## LR sensitivity: {setting}", "",
                  "| optimizer | " + " | ".join(f"lr {lr:g}" for lr in lrs) +
                  " | LR sensitivity |", "|---" * (len(lrs) + 2) + "|"]
        for name in names:
            finals, initials = {}, []
            for lr in lrs:
                runs = grid[lr].get(name, [])
                initials += [r["train_loss"][0][1] for r in runs if r.get("train_loss")]
                values = [r["final"].get("loss", math.nan) if r.get("status") == "ok"
                          else math.nan for r in runs]
                if values:
                    finals[lr] = statistics.fmean(values)
            complete = len(finals) == len(lrs) and initials
            value = lr_sensitivity(finals, statistics.fmean(initials)) if complete else math.nan
            lines.append(f"| {name} | " + " | ".join(
                f"{finals[lr]:.3f}" if lr in finals else "—" for lr in lrs) +
                f" | {'—' if math.isnan(value) else f'{value:.3f}'} |")
        lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    records, _, _ = read_results(args.folder / RESULTS_FILE)
    by_task: dict[str, dict[str, list[dict]]] = {}
    for record in records:
        by_task.setdefault(record["task"], {}).setdefault(record["optimizer"], []).append(record)
    lines = []
    for task, by_optimizer in by_task.items():
        lines += [f"## {task}", "",
                  "| optimizer | seeds | final loss | best loss | 2x spikes | OLMo score (loss) | "
                  "OLMo score (grad norm) | diverged | grad evals | minutes | early warning |",
                  "|---" * 11 + "|"]
        lines += [row(name, runs) for name, runs in by_optimizer.items()]
        lines.append("")
    lines += sensitivity_tables(by_task)
    (args.folder / "stability.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
