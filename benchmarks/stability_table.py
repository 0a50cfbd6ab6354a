"""The stability metrics of a `deo bench` results folder, side by side (docs/stability.md).

For each optimizer, mean ± spread (half the range) over its seeds: final and best held-out
loss (finished runs only), the bench's 2x-rule spike count (every run: a diverged one up to
its divergence, as for the other spike columns), OLMo 2's spike score on the loss and on the
gradient norm, divergences, gradient evaluations and minutes per run. For DEO runs that
recorded the probe's curvature, the early-warning read-out (deo.bench.stability.early_warning:
flags where the curvature exceeds 2x the mean |C| of the 10 probes before, against the run's
own 2x-rule spikes and spike events, lead 20 to 200 steps; every run, a diverged one up to its
divergence). The LR sensitivity caps each seed's final loss at the initial loss.

    python benchmarks/stability_table.py benchmarks/results/stability-slingshot-cpu \
        [--judge NAME]
Writes <folder>/stability.md and its plots under <folder>/plots/: each optimizer's training
loss with its spikes marked (seed 0 or the first seed run), and the final loss against the
learning rate for LR sweeps. --judge NAME adds the targets of docs/stability.md for that
optimizer against AdamW and the best maintained stability optimizer, per task.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

from deo.bench.optimizers import STABILITY_BASELINES
from deo.bench.plots import distinct_colors, plot_loss_against_lr, plot_spike_panels
from deo.bench.stability import curvature_flags, early_warning, lr_sensitivity, spike_events
from deo.bench.task import RESULTS_FILE, SPIKE_FACTOR, SPIKE_WINDOW, read_results, spike_indices

# The targets of docs/stability.md, frozen with the configuration they judge
SPIKE_RATIO = 0.5  # at most this share of AdamW's OLMo score and 2x-spike count
LOSS_MARGIN = 0.01  # final loss no worse than AdamW's + this
SENSITIVITY_RATIO = 0.5  # LR sensitivity at most this share of AdamW's


def spread(values: list[float], digits: str = ".3g") -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "—"
    mean = statistics.fmean(values)
    half = (max(values) - min(values)) / 2
    return f"{mean:{digits}} ± {half:{digits}}" if len(values) > 1 else f"{mean:{digits}}"


def two_x_steps(record: dict) -> list[int]:
    """The record's 2x-rule spike steps; records written before they were kept: the rule on
    the recorded series (every k-th step of a long run)."""
    if record.get("spike_steps"):
        return record["spike_steps"]["2x"]
    series = record.get("train_loss", [])
    return [series[i][0] for i in spike_indices([v for _, v in series], SPIKE_FACTOR,
                                                 SPIKE_WINDOW)]


def events(record: dict) -> list[int]:
    """The record's spike events (deo.bench.stability.spike_events)."""
    return spike_events(two_x_steps(record), record.get("train_loss", []))


def row(name: str, runs: list[dict]) -> str:
    ok = [r for r in runs if r.get("status") == "ok"]
    best = [min((e["loss"] for e in r.get("evals", []) if "loss" in e), default=math.nan)
            for r in ok]
    def warning(target) -> str:
        # every run, a diverged one up to its divergence, as for the spike columns
        found = [early_warning(curvature_flags(r["curvature"]), target(r))
                 for r in runs if r.get("curvature") and r.get("spike_steps")]
        return "—" if not found else (
            f"P {spread([w['precision'] for w in found], '.2f')}, "
            f"R {spread([w['recall'] for w in found], '.2f')}, "
            f"lead {spread([w['lead'] for w in found], '.0f')}")
    return (f"| {name} | {len(runs)} | {spread([r['final'].get('loss') for r in ok], '.4f')} | "
            f"{spread(best, '.4f')} | {spread([r.get('spikes') for r in runs])} | "
            f"{spread([len(events(r)) for r in runs])} | "
            f"{spread([r.get('spike_score_loss') for r in runs], '.4f')} | "
            f"{spread([r.get('spike_score_grad_norm') for r in runs], '.4f')} | "
            f"{sum(r.get('status') == 'diverged' for r in runs)} | "
            f"{spread([r['gradient_evaluations'] for r in ok])} | "
            f"{spread([r['wall_time'] / 60 for r in ok], '.1f')} | "
            f"{warning(lambda r: r['spike_steps']['2x'])} | {warning(events)} |")


def mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(values) if values else math.nan


def _finite_or(value: float, fallback: float) -> float:
    return value if math.isfinite(value) else fallback


def sensitivity_tables(by_task: dict[str, dict[str, list[dict]]], plots: Path | None = None
                       ) -> tuple[list[str], dict[str, dict[str, float]]]:
    """Wortsman et al.'s LR sensitivity of each optimizer over tasks named '<setting>-lr=<v>':
    the mean over seeds of the final loss at each lr, each seed capped at the initial loss (a
    diverged run counts as the initial loss), against the mean initial loss. Returns the
    tables' lines and {setting: {optimizer: sensitivity}}; with ``plots``, draws each
    setting's final loss against the lr there."""
    grids: dict[str, dict[float, dict[str, list[dict]]]] = {}
    for task, by_optimizer in by_task.items():
        setting, sep, lr = task.rpartition("-lr=")
        if sep:
            grids.setdefault(setting, {})[float(lr)] = by_optimizer
    lines: list[str] = []
    sensitivities: dict[str, dict[str, float]] = {}
    for setting, grid in grids.items():
        lrs = sorted(grid)
        curves: dict[str, dict[float, float]] = {}
        all_initials: list[float] = []
        names = sorted({name for runs in grid.values() for name in runs})
        lines += [f"## LR sensitivity: {setting}", "",
                  "| optimizer | " + " | ".join(f"lr {lr:g}" for lr in lrs) +
                  " | LR sensitivity |", "|---" * (len(lrs) + 2) + "|"]
        for name in names:
            initials = [r["train_loss"][0][1] for lr in lrs for r in grid[lr].get(name, [])
                        if r.get("train_loss")]
            initial = statistics.fmean(initials) if initials else math.nan
            finals: dict[float, float] = {}
            for lr in lrs:
                # each seed capped at the initial loss before the mean: a run that ended
                # worse than it started counts as one that diverged, no more, no less
                values = [min(_finite_or(r["final"].get("loss", math.nan), initial), initial)
                          if r.get("status") == "ok" else initial
                          for r in grid[lr].get(name, [])]
                if values:
                    finals[lr] = statistics.fmean(values)
            complete = len(finals) == len(lrs) and initials
            value = lr_sensitivity(finals, initial) if complete else math.nan
            curves[name] = finals
            all_initials += initials
            sensitivities.setdefault(setting, {})[name] = value
            lines.append(f"| {name} | " + " | ".join(
                f"{finals[lr]:.3f}" if lr in finals else "—" for lr in lrs) +
                f" | {'—' if math.isnan(value) else f'{value:.3f}'} |")
        lines.append("")
        if plots is not None:
            figure = plot_loss_against_lr(curves, distinct_colors(list(curves)),
                                          initial=mean(all_initials) if all_initials else None)
            figure.savefig(plots / f"{setting}-loss-against-lr.png")
            lines += [f"![final loss against lr](plots/{setting}-loss-against-lr.png)", ""]
    return lines, sensitivities


def judge(name: str, by_task: dict[str, dict[str, list[dict]]],
          sensitivities: dict[str, dict[str, float]]) -> list[str]:
    """The targets for optimizer ``name`` per task: its spike metrics and final loss against
    AdamW's, and against the best maintained stability optimizer (fewest 2x spikes, then
    lowest OLMo score); LR sensitivity per LR-sweep setting."""
    lines = [f"## Targets for {name}", "",
             "| task | OLMo score vs AdamW (<= 0.5x) | 2x spikes vs AdamW (<= 0.5x) | "
             "final loss vs AdamW + 0.01 | best maintained | vs it: 2x spikes, OLMo score | "
             "spike events vs AdamW, vs the best maintained (not a target) |",
             "|---" * 7 + "|"]

    def metrics(runs: list[dict]) -> tuple[float, float, float, float]:
        ok = [r for r in runs if r.get("status") == "ok"]
        # a diverged run keeps its spikes up to the divergence: all runs count for spikes
        return (mean([r.get("spike_score_loss") for r in runs]),
                mean([r.get("spikes") for r in runs]),
                mean([r["final"].get("loss") for r in ok]) if ok else math.inf,
                mean([len(events(r)) for r in runs]))

    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    for task, by_optimizer in by_task.items():
        if name not in by_optimizer or "adamw" not in by_optimizer:
            continue
        olmo, spikes, final, ours = metrics(by_optimizer[name])
        a_olmo, a_spikes, a_final, a_events = metrics(by_optimizer["adamw"])
        maintained = [m for m in STABILITY_BASELINES if m in by_optimizer]
        best = min(maintained, key=lambda m: metrics(by_optimizer[m])[1::-1], default=None)
        versus, b_events = "—", math.nan
        if best is not None:
            b_olmo, b_spikes, _, b_events = metrics(by_optimizer[best])
            versus = (f"{spikes:.0f} vs {b_spikes:.0f}, {olmo:.4f} vs {b_olmo:.4f}: "
                      f"{verdict(spikes <= b_spikes and olmo <= b_olmo)}")
        lines.append(
            f"| {task} | {olmo:.4f} vs {a_olmo:.4f}: {verdict(olmo <= SPIKE_RATIO * a_olmo)} | "
            f"{spikes:.0f} vs {a_spikes:.0f}: {verdict(spikes <= SPIKE_RATIO * a_spikes)} | "
            f"{final:.4f} vs {a_final:.4f}: {verdict(final <= a_final + LOSS_MARGIN)} | "
            f"{best or '—'} | {versus} | {ours:.2f} vs {a_events:.2f}, vs {b_events:.2f} |")
    for setting, values in sensitivities.items():
        if name in values and "adamw" in values:
            ours, theirs = values[name], values["adamw"]
            lines.append(f"| {setting}: LR sensitivity | {ours:.3f} vs AdamW's {theirs:.3f}: "
                         f"{verdict(ours <= SENSITIVITY_RATIO * theirs)} | | | | | |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--judge", metavar="NAME", default=None,
                        help="add the targets for this optimizer (e.g. the frozen one)")
    args = parser.parse_args()
    plots = args.folder / "plots"
    plots.mkdir(exist_ok=True)
    records, _, _ = read_results(args.folder / RESULTS_FILE)
    by_task: dict[str, dict[str, list[dict]]] = {}
    for record in records:
        by_task.setdefault(record["task"], {}).setdefault(record["optimizer"], []).append(record)
    lines = []
    for task, by_optimizer in by_task.items():
        lines += [f"## {task}", "",
                  "| optimizer | seeds | final loss | best loss | 2x spikes | spike events | "
                  "OLMo score (loss) | OLMo score (grad norm) | diverged | grad evals | "
                  "minutes | early warning (2x spikes) | early warning (events) |",
                  "|---" * 13 + "|"]
        lines += [row(name, runs) for name, runs in by_optimizer.items()]
        lines.append("")
        first = {name: min(runs, key=lambda r: r["seed"]) for name, runs in by_optimizer.items()}
        figure = plot_spike_panels(first, distinct_colors(list(first)),
                                   {name: events(run) for name, run in first.items()})
        figure.savefig(plots / f"{task}-spikes.png")
        lines += [f"![training loss, spikes marked](plots/{task}-spikes.png)", ""]
    sensitivity_lines, sensitivities = sensitivity_tables(by_task, plots)
    if args.judge is not None:
        lines += judge(args.judge, by_task, sensitivities)
    lines += sensitivity_lines
    (args.folder / "stability.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
