"""The benchmark report: DIR/results.jsonl in, DIR/report.md and DIR/plots/*.png out.

    records = load_records("runs/results.jsonl")
    write_report("runs")                # -> runs/report.md, runs/plots/<task>-*.png

Per task, in the order tasks first appear in the file: a table with one row per optimizer
(mean ± sample standard deviation over seeds), a verdict for every DEO variant against its base
optimizer, plots, and the runs that failed. The report opens with an overview, one row per
task: the best baseline, the best of the paper's DEO rows and the best of the recommended
configurations (``deo.recommended(goal)`` on any base); then a summary repeats every verdict,
losses included, and every failed run.

The verdicts and their rule: verdicts.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import GOALS
from . import plots
from .files import write_atomically
from .optimizers import recommended
from .task import RESULTS_FILE, read_results
from .tuning import TUNE_SUFFIX, tuning_table
from .verdicts import (
    Run,
    RunsByOptimizer,
    Verdict,
    base_of,
    cell,
    escape_costs,
    escape_steps,
    final_values,
    judge,
    number,
    spread,
)

REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
MIB = 2**20


class Records(list):
    """Run records as loaded, plus the numbers of the torn lines the loader skipped."""

    def __init__(self, records: Iterable[Run] = (), skipped_lines: Sequence[int] = (),
                 foreign_lines: Sequence[int] = ()):
        super().__init__(records)
        self.skipped_lines = list(skipped_lines)
        self.foreign_lines = list(foreign_lines)  # valid JSON, but no run record


def load_records(path: str | Path) -> Records:
    """The records of a results.jsonl, in file order.

    A line that is not valid JSON is a record torn by a bench killed mid-write: it is skipped
    and its line number kept in ``skipped_lines``. Usually it is the last line, but after
    ``deo bench --resume`` the runner appends below it, as its own ``finished_keys`` expects.
    Valid JSON that is not a run record is skipped the same way, with a warning
    (``task.read_results``). A key that appears twice keeps its later record, at the position
    of its first appearance.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no benchmark results at {path}: run `deo bench` first "
                                f"(it appends one line per finished run to {RESULTS_FILE})")
    records, skipped, foreign = read_results(path)
    by_key = {}
    for record in records:
        by_key[record["key"]] = record
    return Records(by_key.values(), skipped, foreign)


def write_report(out_dir: str | Path, records: Iterable[Run] | None = None,
                 title: str = "DEO benchmark report") -> Path:
    """Write out_dir/report.md and its plots; records default to out_dir/results.jsonl.

    Every file is written to a temporary name and renamed into place, the plots first and
    the report last, so a crash never leaves a half-written file behind.
    """
    out_dir = Path(out_dir)
    records = load_records(out_dir / RESULTS_FILE) if records is None else list(records)
    plots.require_matplotlib()
    plot_dir = out_dir / PLOTS_DIR
    plot_dir.mkdir(parents=True, exist_ok=True)
    sections, verdicts, failures = [], [], []
    for task, runs in group_runs(records).items():
        saddle = is_saddle_task(runs)
        task_verdicts = [judge(task, name, base_of(name), runs, saddle)
                         for name in runs if base_of(name) is not None]
        images = draw_task_plots(task, runs, saddle, plot_dir)
        sections += task_section(task, runs, saddle, task_verdicts, images)
        verdicts += task_verdicts
        failures += [f"- {task}: {line[2:]}" for line in failed_runs(runs)]
    skipped = getattr(records, "skipped_lines", [])
    foreign = getattr(records, "foreign_lines", [])
    text = "\n".join([*header(title, records, skipped, foreign),
                      *overview(group_runs(records)), *tuning_table(records),
                      *summary(verdicts, failures), *sections])
    report_path = out_dir / REPORT_FILE
    write_atomically(report_path, lambda temporary: temporary.write_text(text, encoding="utf-8"))
    return report_path


def group_runs(records: Sequence[Run]) -> dict[str, RunsByOptimizer]:
    """{task: {optimizer: [runs by seed]}}: tasks and optimizers in first-appearance order."""
    optimizer_order = list(dict.fromkeys(record["optimizer"] for record in records))
    tasks: dict[str, RunsByOptimizer] = {}
    for record in records:
        tasks.setdefault(record["task"], {}).setdefault(record["optimizer"], []).append(record)
    return {task: {name: sorted(by_name[name], key=lambda run: run["seed"])
                   for name in optimizer_order if name in by_name}
            for task, by_name in tasks.items()}


def is_saddle_task(runs: RunsByOptimizer) -> bool:
    """A task with an escape threshold in its config, or a run that recorded an escape."""
    def threshold(config: Mapping[str, Any]) -> Any:
        return config.get("escape_threshold", (config.get("task") or {}).get("escape_threshold"))
    return any(run.get("escape_step") is not None or threshold(run.get("config") or {})
               is not None for group in runs.values() for run in group)


def ok_values(runs: Sequence[Run], key: str, scale: float = 1.0) -> list[float]:
    """A top-level number of the runs that finished ("ok"), divided by ``scale``."""
    return [run[key] / scale for run in runs if run.get("status") == "ok"
            and isinstance(run.get(key), (int, float))]


def results_table(runs: RunsByOptimizer, saddle: bool) -> list[str]:
    """The markdown table: one row per optimizer, mean ± std over its finished seeds."""
    has_accuracy = any(final_values(group, "accuracy") for group in runs.values())
    columns: list[tuple[str, Callable[[list[Run]], str]]] = [
        ("seeds", _seeds_cell),
        ("final loss", lambda g: cell(spread(final_values(g)))),
        *([("accuracy", lambda g: cell(spread(final_values(g, "accuracy"))))]
          if has_accuracy else []),
        ("train loss", lambda g: cell(spread(final_values(g, "train_loss")))),
        *([("escape step", _escape_cell)] if saddle else []),
        ("spikes", lambda g: cell(spread(ok_values(g, "spikes")))),
        ("spike score", lambda g: cell(spread(ok_values(g, "spike_score_loss")))),
        ("s/step", lambda g: cell(spread(ok_values(g, "seconds_per_step")))),
        ("grad evals", lambda g: cell(spread(ok_values(g, "gradient_evaluations")))),
        ("peak MiB", lambda g: cell(spread(ok_values(g, "peak_memory_bytes", MIB)))),
    ]
    lines = ["| optimizer | " + " | ".join(name for name, _ in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for name, group in runs.items():
        lines.append(f"| {name} | " + " | ".join(cell(group) for _, cell in columns) + " |")
    return lines


def failed_runs(runs: RunsByOptimizer) -> list[str]:
    """One markdown line per run whose status is not "ok"."""
    lines = []
    for name, group in runs.items():
        for run in group:
            if run.get("status") != "ok":
                last = run["train_loss"][-1] if run.get("train_loss") else None
                where = f", last recorded step {last[0]} (loss {last[1]})" if last else ""
                lines.append(f"- {name} seed {run['seed']}: {run.get('status')}{where}")
    return lines


def draw_task_plots(task: str, runs: RunsByOptimizer, saddle: bool,
                    plot_dir: Path) -> list[tuple[str, str]]:
    """Save the task's plots into plot_dir; (caption, path relative to the report) each."""
    colors = plots.distinct_colors(list(runs))
    deo_runs = {name: group for name, group in runs.items()
                if base_of(name) is not None and any(run.get("deo") for run in group)}
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", task)
    figures: list[tuple[str, str, Callable[[], Any]]] = [
        ("loss curves (line: mean over seeds, band: min..max)", f"{stem}-loss.png",
         lambda: plots.plot_loss_curves(runs, colors))]
    if deo_runs:
        figures.append(("curvature along N for the DEO variants", f"{stem}-curvature.png",
                        lambda: plots.plot_curvature(deo_runs, colors)))
    if saddle:
        steps = {name: [run.get("escape_step") for run in group] for name, group in runs.items()}
        figures.append(("escape step per optimizer", f"{stem}-escape.png",
                        lambda: plots.plot_escape_steps(steps, colors)))
    images = []
    for caption, file_name, draw in figures:
        figure = draw()
        write_atomically(plot_dir / file_name,
                         lambda temporary, figure=figure: figure.savefig(temporary, format="png"))
        images.append((caption, f"{PLOTS_DIR}/{file_name}"))
    return images


def task_section(task: str, runs: RunsByOptimizer, saddle: bool, verdicts: Sequence[Verdict],
                 images: Sequence[tuple[str, str]]) -> list[str]:
    """The markdown of one task: results table, verdicts, plots, failed runs."""
    metric = ("saddle task: the main metric is the escape step (lower is better; never "
              "escaping is worst)" if saddle else "main metric: final eval loss (lower is better)")
    lines = [f"## {task}", "", f"{sum(map(len, runs.values()))} runs; {metric}.", "",
             "### Results", "", *results_table(runs, saddle), "", "### Verdicts", ""]
    lines += [v.line for v in verdicts] or ["- no DEO variant on this task"]
    lines += ["", "### Plots", ""]
    for caption, path in images:
        lines += [f"![{task}: {caption}]({path})", ""]
    lines += ["### Failed runs", "", *(failed_runs(runs) or ["- none"]), ""]
    return lines


def header(title: str, records: Sequence[Run], skipped_lines: Sequence[int],
           foreign_lines: Sequence[int] = ()) -> list[str]:
    """Title and one paragraph on what the numbers are."""
    tasks = len({record["task"] for record in records})
    lines = [f"# {title}", "",
             f"{len(records)} runs on {tasks} tasks. Numbers are mean ± sample standard "
             "deviation over the seeds that finished; one seed shows (n=1).", ""]
    if skipped_lines:
        numbers = ", ".join(map(str, skipped_lines))
        lines += [f"Skipped {len(skipped_lines)} torn line(s) of {RESULTS_FILE} (line {numbers}), "
                  "left by an interrupted bench.", ""]
    if foreign_lines:
        numbers = ", ".join(map(str, foreign_lines))
        lines += [f"Skipped {len(foreign_lines)} line(s) of {RESULTS_FILE} that are JSON but no "
                  f"run record (line {numbers}).", ""]
    return lines


# the paper's rule as it is, on each base, and as the authors' code ran it
PAPER_DEO = re.compile(r"deo-(gd|sgd|adam|adamw|sophia)(-authors)?")


def recommended_names() -> set[str]:
    """Every bench name of ``deo.recommended(goal)``, for every goal and base."""
    return {recommended(base, goal) for goal in GOALS
            for base in ("gd", "sgd", "adam", "adamw", "sophia")}


def overview(by_task: Mapping[str, RunsByOptimizer]) -> list[str]:
    """Per task: the best baseline, the paper's DEO and the recommended DEO, each the best of
    its kind there by the verdicts' metric: first the share of its runs that count (finished;
    saddle tasks: escaped), then their mean (saddle tasks: the gradient evaluations to
    escape). A row none of whose runs counts is never the best; one where some did not count
    shows how many did."""
    ours = recommended_names()
    kinds = (("best baseline", lambda name: base_of(name) is None),
             ("the paper's DEO", lambda name: PAPER_DEO.fullmatch(name) is not None),
             ("recommended DEO", lambda name: name in ours))
    lines = ["## Overview", "", "Per task, the best of each kind (final loss; saddle tasks: "
             "gradient evaluations to escape, probes and trials included; lower is better). A "
             "dash: none of that kind ran, or none escaped with its cost recorded.", "",
             "| task | " + " | ".join(label for label, _ in kinds) + " |",
             "|---" * (len(kinds) + 1) + "|"]
    for task, runs in by_task.items():
        if task.endswith(TUNE_SUFFIX):  # the short runs of the lr grid: their own sections
            continue
        metric = escape_costs if is_saddle_task(runs) else final_values
        cells = []
        for _, belongs in kinds:
            scored = [(-len(values) / len(group), spread(values).mean, name, len(values),
                       len(group)) for name, group in runs.items()
                      if belongs(name) and (values := metric(group))]
            if not scored:
                cells.append("—")
                continue
            _, mean, name, counted, total = min(scored)
            share = "" if counted == total else f" ({counted}/{total} runs)"
            cells.append(f"{name}: {number(mean)}{share}")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def summary(verdicts: Sequence[Verdict], failures: Sequence[str]) -> list[str]:
    """Every verdict and every failed run, before the per-task details."""
    counts = ", ".join(f"{sum(v.outcome == o for v in verdicts)} {o}"
                       for o in ("beats", "ties", "loses", "not compared"))
    rule = ("A DEO variant beats or loses to its base when more of its runs count (finished; "
            "saddle tasks: escaped), or, with equal shares, when the means differ by more than "
            "max(std_variant + std_base, 1% of the base's mean); otherwise they tie.")
    return ["## Summary", "", rule, "", f"Verdicts: {counts}.", "",
            *([v.line for v in verdicts] or ["- no DEO variant was run"]), "",
            f"Failed runs: {len(failures)}.", "", *failures, *([""] if failures else [])]


def _seeds_cell(group: Sequence[Run]) -> str:
    finished = sum(run.get("status") == "ok" for run in group)
    return str(len(group)) if finished == len(group) else f"{finished} of {len(group)} ok"


def _escape_cell(group: Sequence[Run]) -> str:
    steps = escape_steps(group)
    prefix = f"{spread(steps)}, " if steps else ""
    return f"{prefix}{len(steps)}/{len(group)} escaped"

