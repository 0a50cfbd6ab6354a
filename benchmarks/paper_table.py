"""The paper's table beside ours, cell by cell, from `deo bench` result folders
(docs/paper-table.md).

    python benchmarks/paper_table.py benchmarks/results/paper-small [MORE FOLDERS] [--out FILE]

Reads every folder's results.jsonl (the paper presets' tasks ``gpt-small`` and ``gpt-complex``;
a folder may hold either or both) and prints one Markdown table: each row the published
final validation loss at iteration 20000 (design.md, section 4) and ours, for the small and
the complex setting. Our cell is the final validation loss (mean ± sample standard deviation
over the seeds that finished, their number when more than one), the lowest validation loss
over the run, the gradient evaluations (probes included) and the hours per run; "missing"
where the row has no record. A tuned row also counts what its lr grid cost (every short run
of the grid, task ``gpt-<setting>-tune``), so its cost stands beside the others' fairly.
Rows: the paper's eight at the shared lr (what the paper did), the two rows as the authors'
code ran them, each tuned baseline at the lr its grid chose (deo/bench/tuning.py) and the
project's recommended configurations. ``--out`` also writes
the table to FILE.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from deo.bench.optimizers import recommended
from deo.bench.task import RESULTS_FILE, read_results
from deo.bench.tuning import TUNE_SUFFIX

SETTINGS = ("small", "complex")
# Final validation loss at iteration 20000 as the authors published it (design.md, section 4)
PUBLISHED: dict[str, tuple[float, float]] = {
    "AdamW": (1.5430, 1.6435),
    "Adam (coupled weight decay 0.1)": (2.4752, 2.4877),
    "SGD": (2.7789, 2.6934),
    "Sophia": (1.5517, 1.7910),
    '"DEO"-Adam': (1.5398, 1.5745),
    '"DEO"-AdamW': (1.5270, 1.6128),
    '"DEO"-SGD': (2.5828, 2.4943),
    '"DEO"-Sophia-like': (1.5837, 2.2401),
}
# (the row's label, the bench's name for it, the published row it stands beside or None);
# a name ending in "@lr" is a tuned baseline: '<name>@lr=<the lr its grid chose>'
ROWS: tuple[tuple[str, str, str | None], ...] = (
    ("AdamW", "adamw", "AdamW"),
    ("Adam (coupled weight decay 0.1 on 2-D tensors)", "adam", "Adam (coupled weight decay 0.1)"),
    ("SGD (momentum 0.9)", "sgd", "SGD"),
    ("Sophia (SophiaH)", "sophia", "Sophia"),
    ('"DEO"-Adam', "deo-adam", '"DEO"-Adam'),
    ('"DEO"-AdamW', "deo-adamw", '"DEO"-AdamW'),
    ('"DEO"-SGD', "deo-sgd", '"DEO"-SGD'),
    ('"DEO"-Sophia (on SophiaH)', "deo-sophia", '"DEO"-Sophia-like'),
    ("Adam as the authors ran it (coupled decay on every tensor)", "adam-authors",
     "Adam (coupled weight decay 0.1)"),
    ('"DEO"-AdamW as the authors ran it (beta2 0.999, every tensor decayed)',
     "deo-adamw-authors", '"DEO"-AdamW'),
    ("AdamW at its tuned lr", "adamw@lr", None),
    ("Adam at its tuned lr", "adam@lr", None),
    ("SGD at its tuned lr", "sgd@lr", None),
    ("Sophia at its tuned lr", "sophia@lr", None),
    ('deo.recommended("stability") on AdamW', recommended("adamw", "stability"), None),
    ('deo.recommended("saddle") on AdamW', recommended("adamw", "saddle"), None),
)


def at_tuned_lrs(records: Iterable[Mapping[str, Any]], task: str, name: str) -> list[dict]:
    """The records on ``task`` of tuned name '<base>@lr' at any lr: '<base>@lr=<value>'."""
    return [dict(r) for r in records
            if r["task"] == task and r["optimizer"].startswith(name + "=")]


def runs_of(records: Iterable[Mapping[str, Any]], setting: str, name: str) -> list[dict]:
    """The full-length records of bench optimizer ``name`` on the paper's ``setting`` GPT; for
    a tuned name ('<base>@lr'), those of '<base>@lr=<value>' (the tuning grid's short runs,
    task 'gpt-<setting>-tune', are not full length and are left out)."""
    task = f"gpt-{setting}"
    if name.endswith("@lr"):
        return at_tuned_lrs(records, task, name)
    return [dict(r) for r in records if r["task"] == task and r["optimizer"] == name]


def grid_of(records: Iterable[Mapping[str, Any]], setting: str, name: str) -> list[dict]:
    """The lr grid's short runs behind tuned name '<base>@lr' (none for any other name)."""
    if not name.endswith("@lr"):
        return []
    return at_tuned_lrs(records, f"gpt-{setting}{TUNE_SUFFIX}", name)


def grid_cost(grid: Sequence[dict]) -> str:
    """What a tuning grid cost in all: runs, gradient evaluations and hours."""
    evaluations = sum(r.get("gradient_evaluations") or 0 for r in grid)
    hours = sum(r.get("wall_time") or 0 for r in grid) / 3600
    return f"lr grid: {len(grid)} runs, {evaluations} grad evals, {hours:.2f} h"


def cell(runs: list[dict], grid: Sequence[dict] = ()) -> str:
    """Our side of one cell: final loss (mean ± std over the finished seeds), the best
    validation loss over the run, gradient evaluations and hours per run, and what the lr
    grid behind a tuned row cost; "missing"."""
    if not runs:
        return "missing"
    finished = [r for r in runs if r.get("status") == "ok"
                and math.isfinite((r.get("final") or {}).get("loss", math.nan))]
    failed = len(runs) - len(finished)
    if not finished:
        return f"diverged ({failed} of {len(runs)})"
    finals = [r["final"]["loss"] for r in finished]
    text = f"**{statistics.fmean(finals):.4f}**"
    if len(finals) > 1:
        text += f" ± {statistics.stdev(finals):.4f} ({len(finals)} seeds)"
    best = [min(e["loss"] for e in r["evals"]) for r in finished if r.get("evals")]
    details = []
    if best:
        details.append(f"min {statistics.fmean(best):.4f}")
    lrs = {r["optimizer"].partition("@lr=")[2] for r in finished if "@lr=" in r["optimizer"]}
    if lrs:
        details.append(f"lr {', '.join(sorted(lrs))}")
    evaluations = [r["gradient_evaluations"] for r in finished if r.get("gradient_evaluations")]
    if evaluations:
        details.append(f"{statistics.fmean(evaluations):.0f} grad evals")
    hours = [r["wall_time"] / 3600 for r in finished if r.get("wall_time")]
    if hours:
        details.append(f"{statistics.fmean(hours):.2f} h")
    if failed:
        details.append(f"{failed} of {len(runs)} diverged")
    if grid:
        details.append(grid_cost(grid))
    return text + (f" ({'; '.join(details)})" if details else "")


def published(row: str | None, setting: str) -> str:
    if row is None:
        return "—"
    return f"{PUBLISHED[row][SETTINGS.index(setting)]:.4f}"


def table(records: list[Mapping[str, Any]]) -> list[str]:
    """The Markdown table: a line per row of ``ROWS``, published and ours per setting."""
    lines = ["| row | bench name | small, published | small, ours | complex, published "
             "| complex, ours |", "|---|---|---|---|---|---|"]
    for label, name, row in ROWS:
        cells = [f"{published(row, s)} | "
                 f"{cell(runs_of(records, s, name), grid_of(records, s, name))}"
                 for s in SETTINGS]
        lines.append(f"| {label} | `{name}` | {' | '.join(cells)} |")
    return lines


def read_folders(folders: Iterable[Path]) -> list[dict]:
    """Every record of the folders' results.jsonl; a folder without one is an error."""
    records: list[dict] = []
    for folder in folders:
        path = Path(folder) / RESULTS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"folders: {folder} holds no {RESULTS_FILE}")
        records += read_results(path)[0]
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="deo bench result folders")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    lines = table(read_folders(args.folders))
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
