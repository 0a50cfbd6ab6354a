"""Figures for the benchmark report: one function per plot kind, each returning a Figure.

Matplotlib is imported lazily, and only its object-oriented API is used (a Figure on an Agg
canvas, never pyplot), so drawing a report does not change the caller's matplotlib backend.
Each function takes the runs of one task grouped by optimizer (``{name: [record, ...]}``, in
the order the report lists them) and a colour per optimizer, so that one optimizer has the
same colour in every plot of the report.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .stability import EVENT_GAP
from .task import SPIKE_FACTOR, SPIKE_WINDOW, spike_indices

PLOT_LIMIT = 1e30  # larger values (diverged runs) are not drawn
SYMLOG_SPAN = 1e3  # a curvature axis spanning more than this many medians goes symlog
LEGEND_ROW_INCHES = 0.2  # one line of a fontsize-8 legend, with its spacing

Run = dict[str, Any]
Series = Iterable[Sequence[float]]  # [(step, value), ...]

INSTALL_HINT = 'the benchmark report draws its plots with matplotlib: pip install "deo[bench]"'


def require_matplotlib() -> None:
    """Raise ImportError with the install command when matplotlib is missing."""
    _figure_classes()


def distinct_colors(names: Sequence[str]) -> dict[str, Any]:
    """One colour per name: matplotlib's 10-colour cycle, or tab20 for up to 20 names."""
    if len(names) <= 10:
        return {name: f"C{i}" for i, name in enumerate(names)}
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return {name: cmap(i % 20) for i, name in enumerate(names)}


def spike_points(train_loss: Sequence[Sequence[float]], factor: float = SPIKE_FACTOR,
                 window: int = SPIKE_WINDOW) -> list[tuple[float, float]]:
    """(step, loss) of each recorded loss >= factor x the mean of the ``window`` before it.

    The same rule as ``task.count_spikes``, applied to the recorded series; on long runs the
    runner records every k-th step only, so the markers can differ from the record's count.
    """
    losses = [loss for _, loss in train_loss]
    return [(train_loss[i][0], losses[i]) for i in spike_indices(losses, factor, window)]


def plot_loss_curves(runs_by_optimizer: Mapping[str, Sequence[Run]],
                     colors: Mapping[str, str]) -> Any:
    """Train loss (with spike markers) and eval loss against step, mean and min..max band."""
    figure, (train_axes, eval_axes) = _new_figure(2, legend_entries=len(runs_by_optimizer))
    for name, runs in runs_by_optimizer.items():
        color = colors[name]
        _draw_band(train_axes, [run["train_loss"] for run in runs], name, color)
        spikes = [point for run in runs for point in spike_points(run["train_loss"])
                  if _plottable(point[1])]
        if spikes:
            steps, losses = zip(*spikes)
            train_axes.scatter(steps, losses, marker="x", s=36, color=color, zorder=3)
        evals = [[(e["step"], e["loss"]) for e in run["evals"] if "loss" in e] for run in runs]
        _draw_band(eval_axes, evals, name, color)
    _finish(train_axes, "train loss (x: spike)", "loss")
    _finish(eval_axes, "eval loss", "loss")
    _legend_below(figure, [train_axes, eval_axes])
    return figure


def plot_curvature(runs_by_optimizer: Mapping[str, Sequence[Run]],
                   colors: Mapping[str, str]) -> Any:
    """Curvature along DEO's direction N against step, one band per DEO variant.

    The axis turns symmetric-logarithmic, linear within the median |curvature|, once the
    largest value is over SYMLOG_SPAN times that median: one probe of a run that blew up
    (1e13 on the GPT at lr 0.3) would otherwise flatten every other curve onto zero.
    """
    figure, (axes,) = _new_figure(1, legend_entries=len(runs_by_optimizer))
    axes.axhline(0.0, color="0.5", linewidth=0.8)
    magnitudes = []
    for name, runs in runs_by_optimizer.items():
        series = [[(e["step"], e["curvature"]) for e in run["deo"]] for run in runs]
        _draw_band(axes, series, name, colors[name])
        magnitudes += [abs(c) for one_run in series for _, c in one_run if _plottable(c) and c]
    if magnitudes:
        typical = statistics.median(magnitudes)
        if max(magnitudes) > SYMLOG_SPAN * typical:
            axes.set_yscale("symlog", linthresh=typical)
    _finish(axes, "curvature along N (< 0: negative curvature)", "N . HN")
    _legend_below(figure, [axes])
    return figure


def plot_escape_steps(escape_steps: Mapping[str, Sequence[int | None]],
                      colors: Mapping[str, str]) -> Any:
    """Horizontal bars of the mean escape step (error bar: std, dots: seeds), one row per
    optimizer, labelled 'k/n escaped'; rows and the name margin grow with the names, so a
    dozen long names like 'deo-sgd-ritz:alpha=-1,escape_step=0.25' stay readable."""
    names = list(escape_steps)
    left = 0.3 + 0.065 * max((len(n) for n in names), default=1)  # inches, fontsize 8
    figure_class, canvas_class = _figure_classes()
    width, height = left + 4.2, 0.9 + 0.28 * max(1, len(names))
    figure = figure_class(figsize=(width, height), dpi=100)
    canvas_class(figure)
    figure.subplots_adjust(left=left / width, right=1 - 0.2 / width, bottom=0.5 / height,
                           top=1 - 0.35 / height)
    axes = figure.subplots()
    for row, name in enumerate(names):
        steps = [s for s in escape_steps[name] if s is not None]
        end = 0.0
        if steps:
            mean = statistics.fmean(steps)
            std = statistics.stdev(steps) if len(steps) > 1 else None
            axes.barh(row, mean, xerr=std, capsize=3, color=colors[name], alpha=0.7)
            axes.scatter(steps, [row] * len(steps), color="black", s=10, zorder=3)
            end = max(steps)
        axes.annotate(f"{len(steps)}/{len(escape_steps[name])} escaped", (end, row),
                      xytext=(4, 0), textcoords="offset points", ha="left", va="center",
                      fontsize=7)
    axes.set_yticks(range(len(names)), names, fontsize=8)
    axes.set_ylim(len(names) - 0.5, -0.5)  # the first optimizer on top
    axes.set_xlabel("escape step (lower is better)")
    axes.set_title("first step below the escape threshold")
    axes.margins(x=0.25)  # room for the labels right of the bars
    return figure


def plot_spike_panels(runs_by_optimizer: Mapping[str, Run], colors: Mapping[str, str],
                      marks: Mapping[str, Sequence[int]], columns: int = 2) -> Any:
    """One panel per optimizer (one run each, usually seed 0): its training loss on a log axis,
    with the steps in ``marks[name]`` (its spike events) marked at their peaks."""
    names = list(runs_by_optimizer)
    rows = max(1, math.ceil(len(names) / columns))
    figure_class, canvas_class = _figure_classes()
    figure = figure_class(figsize=(5.2 * columns, 2.6 * rows), dpi=100)
    canvas_class(figure)
    figure.subplots_adjust(left=0.08, right=0.98, bottom=0.5 / (2.6 * rows) + 0.04,
                           top=1 - 0.3 / (2.6 * rows), hspace=0.55, wspace=0.2)
    grid = figure.subplots(rows, columns, squeeze=False)
    for index, axes in enumerate(grid.flat):
        if index >= len(names):
            axes.set_visible(False)
            continue
        name, run = names[index], runs_by_optimizer[names[index]]
        points = [(step, value) for step, value in run.get("train_loss", [])
                  if _plottable(value) and value > 0]
        stride = points[1][0] - points[0][0] if len(points) > 1 else 1
        if points:
            axes.plot(*zip(*points), color=colors[name], linewidth=0.8)
            axes.set_yscale("log")
        events = set(marks.get(name, ()))
        # each event at its highest recorded loss within an event's gap of its start
        marked = [max(((step, value) for step, value in points
                       if -stride <= step - event <= EVENT_GAP), key=lambda p: p[1],
                      default=None)
                  for event in events]
        marked = [point for point in marked if point is not None]
        if marked:
            axes.scatter(*zip(*marked), marker="x", s=20, color="black", zorder=3)
        axes.set_title(f"{name} (seed {run.get('seed')}): {len(events)} spike events",
                       fontsize=8)
        axes.tick_params(labelsize=7)
    return figure


def plot_loss_against_lr(finals: Mapping[str, Mapping[float, float]],
                         colors: Mapping[str, str], initial: float | None = None) -> Any:
    """Final loss against learning rate (log x), one line per optimizer; a missing or
    diverged point is left out. ``initial``: the loss at initialisation, drawn as a line
    (LR sensitivity counts a run worse than it as it)."""
    figure, (axes,) = _new_figure(1, legend_entries=len(finals))
    for name, by_lr in finals.items():
        points = sorted((lr, loss) for lr, loss in by_lr.items() if _plottable(loss))
        if points:
            axes.plot(*zip(*points), marker="o", markersize=3, color=colors[name], label=name)
    if initial is not None and _plottable(initial):
        axes.axhline(initial, color="0.5", linewidth=0.8, linestyle="--")
    axes.set_xscale("log")
    _finish(axes, "final loss against learning rate (dashed: initial loss)", "final loss")
    axes.set_xlabel("learning rate")
    _legend_below(figure, [axes])
    return figure


def _draw_band(axes: Any, series: Series, label: str, color: str) -> None:
    """Mean line and min..max band over seeds; values that cannot be drawn are left out."""
    by_step: dict[float, list[float]] = {}
    for one_run in series:
        for step, value in one_run:
            if _plottable(value):
                by_step.setdefault(step, []).append(value)
    if not by_step:
        return
    steps = sorted(by_step)
    axes.plot(steps, [statistics.fmean(by_step[s]) for s in steps], color=color, label=label,
              linewidth=1.2)
    axes.fill_between(steps, [min(by_step[s]) for s in steps],
                      [max(by_step[s]) for s in steps], color=color, alpha=0.2, linewidth=0)


def _plottable(value: float | None) -> bool:
    # A diverged run reaches 1e300 and beyond: its mean overflows and a log axis cannot label
    # it. Such values are left out of the drawing (the tables still show them).
    return value is not None and math.isfinite(value) and abs(value) < PLOT_LIMIT


def _finish(axes: Any, title: str, ylabel: str) -> None:
    """Titles and a log scale for positive data spanning more than a decade."""
    axes.set_title(title)
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    if not axes.has_data():
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
        return
    low, high = axes.dataLim.y0, axes.dataLim.y1
    if low > 0 and high / low > 10:
        axes.set_yscale("log")


def _legend_below(figure: Any, axes_row: Sequence[Any]) -> None:
    """One legend for the row, below the axes: bench names are long ('deo-adamw-ritz:alpha=0,
    escape_step=0.25,...'), and a legend inside the axes hides the curves."""
    entries: dict[str, Any] = {}
    for axes in axes_row:
        for handle, label in zip(*axes.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if entries:
        figure.legend(list(entries.values()), list(entries), loc="lower center",
                      ncol=len(axes_row), fontsize=8, frameon=False)


def _new_figure(columns: int, legend_entries: int = 0) -> tuple[Any, list[Any]]:
    """A row of ``columns`` axes with fixed margins (a layout engine would double the cost),
    and room below them for a legend of ``legend_entries`` names in ``columns`` columns."""
    figure_class, canvas_class = _figure_classes()
    legend_inches = LEGEND_ROW_INCHES * math.ceil(legend_entries / columns)
    width, height = 5.2 * columns, 3.8 + legend_inches
    figure = figure_class(figsize=(width, height), dpi=100)
    canvas_class(figure)
    figure.subplots_adjust(left=0.8 / width, right=1 - 0.2 / width, wspace=0.3,
                           bottom=(0.55 + legend_inches) / height, top=1 - 0.35 / height)
    return figure, list(figure.subplots(1, columns, squeeze=False)[0])


def _figure_classes() -> tuple[type, type]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return Figure, FigureCanvasAgg
