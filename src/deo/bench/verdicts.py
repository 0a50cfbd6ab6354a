"""Verdicts: a DEO variant against its base optimizer on one task, from the run records.

The metric is the final eval "loss" (lower is better); on saddle tasks it is the escape step
(lower is better, a run that never escapes is worst). A run counts when it has the metric: it
finished (status "ok") with a finite loss, or, on a saddle task, it escaped.

  1. If the two optimizers' shares of runs that count differ, the larger share wins.
  2. Otherwise, when no run counts on either side, they tie.
  3. Otherwise the variant beats (loses to) its base when its mean is lower (higher) by more
     than max(std_variant + std_base, 1% of |mean_base|), where a one-seed side's std counts
     as 0 (so with one seed each the rule is a relative difference above 1%); else they tie.

A diverged run thus loses to a finished one whatever the finished one's loss: read the loss
beside the verdict.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .optimizers import AUTHORS_ROWS

RELATIVE_FLOOR = 0.01  # a difference within 1% of the base's mean is a tie
DEO_PREFIX = "deo-"
ORACLE_PREFIX = "oracle-"  # deo-oracle-<base>: N from exact Lanczos (oracle.py)
ROTATION_SUFFIXES = ("-ritz", "-oja")

Run = dict[str, Any]
RunsByOptimizer = dict[str, list[Run]]


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation of one quantity over seeds (std None for n=1)."""

    mean: float
    std: float | None
    n: int

    def __str__(self) -> str:
        if self.std is None:
            return f"{number(self.mean)} (n=1)"
        return f"{number(self.mean)} ± {number(self.std)}"


@dataclass(frozen=True)
class Verdict:
    """A DEO variant against its base optimizer on one task."""

    task: str
    variant: str
    base: str
    outcome: str  # "beats", "ties", "loses" or "not compared"
    detail: str

    @property
    def line(self) -> str:
        return f"- {self.task}: {self.variant} vs {self.base}: **{self.outcome}** ({self.detail})"


def base_of(name: str) -> str | None:
    """The base optimizer of a DEO variant ("deo-adamw-ritz", "deo-oracle-adamw" -> "adamw");
    None if not DEO."""
    head = name.partition(":")[0]  # "deo-adamw:interval=5" carries options after the colon
    if not head.startswith(DEO_PREFIX):
        return None
    if head in AUTHORS_ROWS:  # "deo-adamw-authors": the paper's DEO-AdamW, compared to AdamW
        return AUTHORS_ROWS[head][0]
    base = head[len(DEO_PREFIX):].removeprefix(ORACLE_PREFIX)
    for suffix in ROTATION_SUFFIXES:
        base = base.removesuffix(suffix)
    return base or None


def spread(values: Sequence[float]) -> Spread | None:
    """Mean and sample std of ``values``; None when there are none."""
    if not values:
        return None
    try:
        std = statistics.stdev(values) if len(values) > 1 else None
        return Spread(statistics.fmean(values), std, len(values))
    except OverflowError:  # diverged runs near the float limit: the spread is unbounded
        return Spread(math.inf, math.inf if len(values) > 1 else None, len(values))


def judge(task: str, variant: str, base: str, runs: RunsByOptimizer, saddle: bool) -> Verdict:
    """The verdict of ``variant`` against ``base`` on one task (rule: module docstring)."""
    if base not in runs:
        return Verdict(task, variant, base, "not compared", f"no {base} runs on this task")
    metric, label, counted = ((escape_steps, "escape step", "escaped") if saddle
                              else (final_values, "final loss", "finished"))
    ours, theirs = metric(runs[variant]), metric(runs[base])
    n_ours, n_theirs = len(runs[variant]), len(runs[base])
    ours_spread, theirs_spread = spread(ours), spread(theirs)
    numbers = f"{label} {cell(ours_spread)} vs {cell(theirs_spread)}"
    counts = f"{counted} {len(ours)}/{n_ours} vs {len(theirs)}/{n_theirs}"
    share_difference = len(ours) * n_theirs - len(theirs) * n_ours  # compares the fractions
    if share_difference != 0:
        outcome = "beats" if share_difference > 0 else "loses"
        return Verdict(task, variant, base, outcome, f"{counts}; {numbers}")
    if ours_spread is None or theirs_spread is None:
        return Verdict(task, variant, base, "ties", f"{counts}; no {label} on either side")
    difference = ours_spread.mean - theirs_spread.mean
    threshold = max((ours_spread.std or 0.0) + (theirs_spread.std or 0.0),
                    RELATIVE_FLOOR * abs(theirs_spread.mean))
    outcome = "ties" if abs(difference) <= threshold else "beats" if difference < 0 else "loses"
    detail = (f"{numbers}; difference {difference:+.4g}, threshold {threshold:.4g} "
              f"(std sum or 1% of base, the larger); {counts}")
    return Verdict(task, variant, base, outcome, detail)


def final_values(runs: Sequence[Run], key: str = "loss") -> list[float]:
    """final[key] of the runs that finished ("ok") with a finite value."""
    values = [run.get("final", {}).get(key) for run in runs if run.get("status") == "ok"]
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def escape_steps(runs: Sequence[Run]) -> list[int]:
    """Escape steps of the runs that escaped, whatever their status."""
    return [run["escape_step"] for run in runs if run.get("escape_step") is not None]


def escape_costs(runs: Sequence[Run]) -> list[int]:
    """Gradient evaluations up to the escape, DEO's probes and trials included, of the runs
    that escaped; a record from before they were kept counts its steps if it is no DEO run
    (one evaluation per step) and not at all if it is."""
    costs = []
    for run in runs:
        if run.get("escape_evaluations") is not None:
            costs.append(run["escape_evaluations"])
        elif run.get("escape_step") is not None and base_of(run["optimizer"]) is None:
            costs.append(run["escape_step"] + 1)
    return costs


def cell(value: Spread | None) -> str:
    return "—" if value is None else str(value)


def number(value: float) -> str:
    """4 significant digits; whole numbers below a million as integers (300, not 300.0)."""
    if not math.isfinite(value) or abs(value) >= 1e6:
        return f"{value:.4g}"
    if value == int(value):
        return str(int(value))
    return f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
