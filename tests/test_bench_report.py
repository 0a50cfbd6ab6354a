"""deo.bench.report: tables, verdicts, plots and robustness, on synthetic run records."""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from deo.bench import plots, report, runner, verdicts  # noqa: E402
from deo.bench.task import count_spikes  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SADDLE_THRESHOLD = -1.0

# final eval loss per (optimizer, seed) on a language-model task, and escape step on a saddle
# task (None: never escaped); the verdicts these give are worked out in the tests below
GPT_LOSSES = {"adamw": [1.60, 1.62], "deo-adamw": [1.50, 1.52], "deo-adamw-ritz": [1.60, 1.64]}
SADDLE_ESCAPES = {"adamw": [100, 110], "deo-adamw": [200, 220], "deo-adamw-ritz": [40, None]}


def make_record(task: str, optimizer: str, seed: int, final_loss: float, *,
                escape_step: int | None = None, escape_threshold: float | None = None,
                status: str = "ok", accuracy: float | None = None, steps: int = 300,
                spike_at: int | None = None) -> dict:
    """One results.jsonl record with the schema of task.RunRecord.to_json."""
    train_loss = [[s, final_loss + 2.0 / (1.0 + s / 20.0) + 0.01 * seed] for s in range(steps)]
    if spike_at is not None:
        train_loss[spike_at][1] *= 5.0
    if status != "ok":
        train_loss[-1][1] = float("nan")
    evals = [{"step": s, "loss": final_loss + 1.0 / (1.0 + s / 50.0)} for s in (100, 200)]
    evals.append({"step": steps, "loss": final_loss})
    final = {"loss": final_loss, "train_loss": final_loss + 0.1}
    if accuracy is not None:
        final["accuracy"] = accuracy
    deo = ([{"step": s, "curvature": -1.0 + s / steps + 0.1 * seed, "angle": 0.5,
             "grad_share": 0.1, "extra_gradients": s // 10} for s in (100, 200, steps)]
           if optimizer.startswith("deo-") else [])
    task_config = {"steps": steps}
    if escape_threshold is not None:
        task_config["escape_threshold"] = escape_threshold
    return {"key": f"{task}|{optimizer}|{seed}", "task": task, "optimizer": optimizer,
            "seed": seed, "preset": "test", "config": {"task": task_config, "optimizer": {}},
            "train_loss": train_loss, "evals": evals, "deo": deo, "final": final,
            "escape_step": escape_step, "spikes": 0 if spike_at is None else 1,
            "status": status, "wall_time": 1.5, "seconds_per_step": 0.005,
            "peak_memory_bytes": 3 * 2**20, "gradient_evaluations": steps}


def two_task_records() -> list[dict]:
    records = [make_record("gpt-small", name, seed, loss, accuracy=0.5 + seed / 10,
                           spike_at=250 if name == "adamw" else None)
               for name, losses in GPT_LOSSES.items() for seed, loss in enumerate(losses)]
    records += [make_record("saddle-xy", name, seed, -2.0, escape_step=step,
                            escape_threshold=SADDLE_THRESHOLD)
                for name, escapes in SADDLE_ESCAPES.items() for seed, step in enumerate(escapes)]
    return records


def write_results(directory: Path, records: list[dict], torn_tail: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / report.RESULTS_FILE
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + torn_tail)
    return path


def section(markdown: str, title: str) -> str:
    """The text of the '## title' section, up to the next '## ' heading."""
    start = markdown.index(f"\n## {title}\n")
    end = markdown.find("\n## ", start + 1)
    return markdown[start:] if end < 0 else markdown[start:end]


def table_row(text: str, optimizer: str) -> dict[str, str]:
    """The results-table row of ``optimizer`` as {column: cell}."""
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| optimizer |"))
    columns = [c.strip() for c in lines[head].strip("|").split("|")]
    row = next(line for line in lines[head:] if line.startswith(f"| {optimizer} |"))
    return dict(zip(columns, (c.strip() for c in row.strip("|").split("|"))))


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.4g}"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("bench")
    write_results(out, two_task_records())
    path = report.write_report(out)
    return out, path.read_text(encoding="utf-8")


def test_base_of_names_the_base_optimizer_of_deo_variants_only():
    assert verdicts.base_of("deo-adamw") == "adamw"
    assert verdicts.base_of("deo-adamw-ritz") == "adamw"
    assert verdicts.base_of("deo-oracle-sgd:alpha=-1") == "sgd"
    assert verdicts.base_of("deo-sgd-oja") == "sgd"
    assert verdicts.base_of("deo-adamw:interval=5") == "adamw"
    assert verdicts.base_of("adamw") is None and verdicts.base_of("pgd") is None
    # the authors' rows: their DEO-AdamW is judged against AdamW, their Adam is no DEO
    assert verdicts.base_of("deo-adamw-authors") == "adamw"
    assert verdicts.base_of("adam-authors") is None
    assert report.PAPER_DEO.fullmatch("deo-adamw-authors") and report.PAPER_DEO.fullmatch("deo-gd")
    assert not report.PAPER_DEO.fullmatch("deo-adamw-ritz")


def test_table_has_a_row_per_optimizer_with_mean_and_std_over_seeds(built):
    out, markdown = built
    assert (out / "report.md").is_file()
    gpt = section(markdown, "gpt-small")
    for name, losses in GPT_LOSSES.items():
        row = table_row(gpt, name)
        assert row["seeds"] == "2"
        assert row["final loss"] == mean_std(losses)
        assert row["train loss"] == mean_std([x + 0.1 for x in losses])
        assert row["accuracy"] == mean_std([0.5, 0.6])
        assert row["peak MiB"] == "3 ± 0"
    assert "escape step" not in table_row(gpt, "adamw")


def test_tasks_and_optimizers_keep_first_appearance_order(built):
    _, markdown = built
    assert markdown.index("## gpt-small") < markdown.index("## saddle-xy")
    gpt = section(markdown, "gpt-small")
    rows = [gpt.index(f"| {name} |") for name in GPT_LOSSES]
    assert rows == sorted(rows)


def test_grouping_is_first_appearance_not_alphabetical():
    records = [make_record(task, name, seed, 1.0) for task in ("lstm", "deep-linear")
               for name in ("sgd", "deo-adamw", "adamw") for seed in (1, 0)]
    groups = report.group_runs(records)
    assert list(groups) == ["lstm", "deep-linear"]
    assert list(groups["lstm"]) == ["sgd", "deo-adamw", "adamw"]
    assert [run["seed"] for run in groups["lstm"]["sgd"]] == [0, 1]


def test_verdicts_beats_ties_and_loses_with_their_numbers(built):
    _, markdown = built
    gpt, saddle = section(markdown, "gpt-small"), section(markdown, "saddle-xy")
    # 1.51 vs 1.61: difference 0.1 > std sum 0.0141 + 0.0141
    assert "- gpt-small: deo-adamw vs adamw: **beats** (final loss 1.51 ± 0.01414 vs 1.61" in gpt
    # 1.62 vs 1.61: difference 0.01 < std sum 0.0283 + 0.0141
    assert "- gpt-small: deo-adamw-ritz vs adamw: **ties** (final loss 1.62 ± 0.02828" in gpt
    # escape at 210 vs 105: later is worse
    assert "- saddle-xy: deo-adamw vs adamw: **loses** (escape step 210 ± 14.14 vs 105" in saddle
    # one seed never escaped: not escaping is worst, even though the other escaped first
    assert ("- saddle-xy: deo-adamw-ritz vs adamw: **loses** (escaped 1/2 vs 2/2; "
            "escape step 40 (n=1) vs 105 ± 7.071)") in saddle


def test_summary_lists_every_verdict_losses_included(built):
    _, markdown = built
    summary = section(markdown, "Summary")
    assert markdown.index("## Summary") < markdown.index("## gpt-small")
    assert "Verdicts: 1 beats, 1 ties, 2 loses, 0 not compared." in summary
    assert "- saddle-xy: deo-adamw vs adamw: **loses**" in summary
    assert "- saddle-xy: deo-adamw-ritz vs adamw: **loses**" in summary
    assert "Failed runs: 0." in summary


def test_saddle_task_gets_escape_column_and_escape_bars(built):
    out, markdown = built
    saddle = section(markdown, "saddle-xy")
    assert table_row(saddle, "adamw")["escape step"] == "105 ± 7.071, 2/2 escaped"
    assert table_row(saddle, "deo-adamw-ritz")["escape step"] == "40 (n=1), 1/2 escaped"
    assert "](plots/saddle-xy-escape.png)" in saddle
    assert (out / "plots" / "saddle-xy-escape.png").stat().st_size > 0
    assert "escape" not in "".join(re.findall(r"\]\((plots/[^)]+)\)", section(markdown,
                                                                          "gpt-small")))


def test_plots_exist_are_png_and_are_referenced_from_the_markdown(built):
    out, markdown = built
    referenced = re.findall(r"!\[[^\]]*\]\((plots/[^)]+\.png)\)", markdown)
    assert set(referenced) == {f"plots/{task}-{kind}.png" for task in ("gpt-small", "saddle-xy")
                               for kind in ("loss", "curvature")} | {"plots/saddle-xy-escape.png"}
    for relative in referenced:
        data = (out / relative).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert not list(out.rglob("*.tmp"))


def test_report_is_deterministic(tmp_path):
    records = [make_record("deep-linear", name, seed, 1.0 + seed / 100)
               for name in ("adamw", "deo-adamw") for seed in (0, 1)]
    for record in records:
        record["deo"] = []  # one plot per report keeps this test fast
    first = report.write_report(tmp_path / "a", records).read_text(encoding="utf-8")
    second = report.write_report(tmp_path / "b", records).read_text(encoding="utf-8")
    assert first == second and "deep-linear: deo-adamw vs adamw: **ties**" in first


def test_single_seed_shows_n1_and_uses_the_one_percent_rule(tmp_path):
    records = [make_record("lstm", "adamw", 0, 1.52), make_record("lstm", "deo-adamw", 0, 1.50),
               make_record("lstm", "deo-adamw-ritz", 0, 1.51)]
    markdown = report.write_report(tmp_path, records).read_text(encoding="utf-8")
    assert table_row(markdown, "adamw")["final loss"] == "1.52 (n=1)"
    assert "deo-adamw vs adamw: **beats**" in markdown  # 0.02 > 1% of 1.52
    assert "deo-adamw-ritz vs adamw: **ties**" in markdown  # 0.01 <= 0.0152


def test_diverged_runs_are_listed_and_lose(tmp_path):
    records = [make_record("digits-mlp", "adamw", s, 0.3) for s in (0, 1)]
    records += [make_record("digits-mlp", "deo-adamw", 0, 0.2),
                make_record("digits-mlp", "deo-adamw", 1, 0.2, status="diverged")]
    markdown = report.write_report(tmp_path, records).read_text(encoding="utf-8")
    task = section(markdown, "digits-mlp")
    failed = task[task.index("### Failed runs"):]
    assert "- deo-adamw seed 1: diverged, last recorded step 299 (loss nan)" in failed
    assert table_row(task, "deo-adamw")["seeds"] == "1 of 2 ok"
    assert "deo-adamw vs adamw: **loses** (finished 1/2 vs 2/2" in section(markdown, "Summary")
    assert "- digits-mlp: deo-adamw seed 1: diverged" in section(markdown, "Summary")


def test_truncated_last_line_is_skipped_and_counted(tmp_path):
    records = two_task_records()[:3]
    path = write_results(tmp_path, records, torn_tail=json.dumps(records[0])[:40])
    loaded = report.load_records(path)
    assert [r["key"] for r in loaded] == [r["key"] for r in records]
    assert loaded.skipped_lines == [4]
    markdown = report.write_report(tmp_path).read_text(encoding="utf-8")
    assert "Skipped 1 torn line(s) of results.jsonl (line 4)" in markdown


def test_a_torn_line_that_a_resumed_bench_wrote_past_is_skipped(tmp_path):
    first, second = two_task_records()[:2]
    path = tmp_path / report.RESULTS_FILE
    path.write_text(json.dumps(first) + "\n" + json.dumps(second)[:50] + "\n"
                    + json.dumps(second) + "\n")
    loaded = report.load_records(path)
    assert [r["key"] for r in loaded] == [first["key"], second["key"]]
    assert loaded.skipped_lines == [2]


@pytest.mark.parametrize("foreign", [42, [1, 2], {"step": 3}, "text"])
def test_json_that_is_not_a_run_record_is_skipped_with_a_warning(tmp_path, foreign):
    # 42 passed --resume and then crashed the report
    first = two_task_records()[0]
    path = tmp_path / report.RESULTS_FILE
    path.write_text(json.dumps(first) + "\n" + json.dumps(foreign) + "\n")
    with pytest.warns(RuntimeWarning, match=":2: not a run record"):
        loaded = report.load_records(path)
    assert [r["key"] for r in loaded] == [first["key"]] and loaded.foreign_lines == [2]
    with pytest.warns(RuntimeWarning, match=":2: not a run record"):
        markdown = report.write_report(tmp_path).read_text(encoding="utf-8")
    assert "Skipped 1 line(s) of results.jsonl that are JSON but no run record (line 2)" \
        in markdown
    with pytest.warns(RuntimeWarning, match=":2: not a run record"):
        assert runner.finished_keys(path) == {first["key"]}


def test_missing_results_raise_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="deo bench"):
        report.load_records(tmp_path / "results.jsonl")
    with pytest.raises(FileNotFoundError):
        report.write_report(tmp_path)
    assert not (tmp_path / "report.md").exists()


def test_missing_matplotlib_raises_with_install_hint(tmp_path, monkeypatch):
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=re.escape('pip install "deo[bench]"')):
        report.write_report(tmp_path, two_task_records())
    assert list(tmp_path.iterdir()) == []  # checked before anything is written


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.md"
    target.write_text("old report")

    def crash_halfway(temporary: Path) -> None:
        temporary.write_text("half a rep")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        report.write_atomically(target, crash_halfway)
    assert target.read_text() == "old report"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_spike_markers_follow_the_runner_spike_rule():
    series = make_record("gpt-small", "adamw", 0, 1.0, spike_at=250)["train_loss"]
    points = plots.spike_points(series)
    assert [step for step, _ in points] == [250]
    assert len(points) == count_spikes([loss for _, loss in series])


def test_diverged_runs_with_huge_losses_still_get_a_report(tmp_path):
    """Runs that reached 1e308 once broke matplotlib's log-axis labels (OverflowError)."""
    from deo.bench.report import write_report

    huge = {"key": "t|deo-adamw|0", "task": "t", "optimizer": "deo-adamw", "seed": 0,
            "preset": "quick", "config": {}, "status": "ok", "escape_step": None, "spikes": 0,
            "train_loss": [[i, 1e308 if i > 60 else float(i + 1)] for i in range(120)],
            "evals": [{"step": 100, "loss": 1e308}], "deo": [], "final": {"loss": 1e308},
            "wall_time": 1.0, "seconds_per_step": 0.01, "peak_memory_bytes": 0,
            "gradient_evaluations": 120}
    sane = {**huge, "key": "t|adamw|0", "optimizer": "adamw",
            "train_loss": [[i, 1.0 / (i + 1)] for i in range(120)],
            "evals": [{"step": 100, "loss": 0.5}], "final": {"loss": 0.5}}
    huge_again = {**huge, "key": "t|deo-adamw|1", "seed": 1}  # the mean of two overflows
    report = write_report(tmp_path, records=[sane, huge, huge_again])
    text = report.read_text()
    assert "loses" in text and (tmp_path / "plots" / "t-loss.png").stat().st_size > 0


def test_one_legend_below_the_axes_names_every_optimizer():
    """Long bench names in a legend inside the axes hid the curves: one legend goes below."""
    names = ["adamw", "deo-adamw-ritz:alpha=0,escape_step=0.25,interval=5,escape_rule=checked",
             "deo-adamw-ritz:alpha=-1,interval=5"]
    runs = {name: [make_record("gpt-small", name, seed, 1.0 + 0.1 * seed) for seed in range(2)]
            for name in names}
    for run in runs[names[1]]:
        run["deo"] = [{"step": 100, "curvature": -1.0}, {"step": 200, "curvature": -2.0}]
    deo_runs = {name: runs[name] for name in names[1:]}
    for figure, drawn in ((plots.plot_loss_curves(runs, plots.distinct_colors(names)), names),
                          (plots.plot_curvature(deo_runs, plots.distinct_colors(names[1:])),
                           names[1:])):
        figure.canvas.draw()
        assert all(axes.get_legend() is None for axes in figure.axes)
        (legend,) = figure.legends
        assert sorted(text.get_text() for text in legend.get_texts()) == sorted(drawn)
        below = legend.get_window_extent().y1
        assert all(below <= axes.get_tightbbox().y0 + 1 for axes in figure.axes)


def test_curvature_axis_turns_symlog_only_when_one_probe_dwarfs_the_rest():
    """A probe at 1e13 among curvatures of ~1 flattened every curve onto zero."""
    def figure_for(curvatures):
        run = {"deo": [{"step": 10 * i, "curvature": c} for i, c in enumerate(curvatures)]}
        return plots.plot_curvature({"deo-adamw": [run]}, {"deo-adamw": "C0"})

    (calm,) = figure_for([1.0, -2.0, 3.0, -1.5]).axes
    assert calm.get_yscale() == "linear"
    (blown,) = figure_for([1.0, -2.0, 3.0, -1.5, -6e12]).axes
    assert blown.get_yscale() == "symlog"
    assert blown.yaxis.get_transform().linthresh == 2.0  # the median |curvature|


def test_spike_panels_mark_each_event_at_its_peak_and_hide_spare_axes():
    series = [[step, 1e-8] for step in range(0, 1000, 10)]
    series[50][1], series[51][1] = 0.5, 2.0  # a spike at 500-510, peaking at 510
    runs = {"adamw": {"seed": 0, "train_loss": series},
            "adopt": {"seed": 0, "train_loss": [[s, 1e-8] for s, _ in series]},
            "spam": {"seed": 0, "train_loss": [[s, 1e-8] for s, _ in series]}}
    figure = plots.plot_spike_panels(runs, plots.distinct_colors(list(runs)),
                                     {"adamw": [500], "adopt": []})
    adamw, adopt, spam, spare = figure.axes
    assert not spare.get_visible() and adamw.get_yscale() == "log"
    (marks,) = adamw.collections
    assert marks.get_offsets().tolist() == [[510.0, 2.0]]
    assert not adopt.collections and not spam.collections
    assert adamw.get_title().endswith("1 spike events") and "0 spike events" in spam.get_title()


def test_loss_against_lr_draws_each_optimizer_over_its_finite_points():
    finals = {"adamw": {1e-3: 2.0, 1e-2: 1.5, 1e-1: math.inf},
              "adopt": {1e-3: 2.1, 1e-2: 1.4, 1e-1: 1.6}}
    figure = plots.plot_loss_against_lr(finals, plots.distinct_colors(list(finals)),
                                        initial=4.2)
    (axes,) = figure.axes
    lines = {line.get_label(): line for line in axes.get_lines() if not
             line.get_label().startswith("_")}
    assert list(lines["adamw"].get_xdata()) == [1e-3, 1e-2]  # the diverged point left out
    assert list(lines["adopt"].get_ydata()) == [2.1, 1.4, 1.6]
    assert axes.get_xscale() == "log"
    assert any(list(line.get_ydata()) == [4.2, 4.2] for line in axes.get_lines())


def test_the_report_opens_with_the_best_baseline_the_papers_deo_and_the_recommended_one(tmp_path):
    from deo.bench.optimizers import recommended

    ours = recommended("adamw", "stability")
    records = [make_record("gpt", name, seed, loss + 0.01 * seed)
               for name, loss in (("adamw", 2.0), ("sgd", 3.0), ("deo-adamw", 2.2),
                                  ("deo-adamw-ritz", 1.5), (ours, 1.9))
               for seed in range(2)]
    records += [make_record("saddle", name, 0, 0.0, escape_step=step, escape_threshold=0.5)
                for name, step in (("sgd", 40), ("gd", 60), ("deo-sgd", None),
                                   (recommended("sgd", "saddle"), 20))]
    records[-1]["escape_evaluations"] = 27  # its probes and trials: the cost, not the steps
    records.append(make_record("gpt-tune", "sgd@lr=0.1", 0, 0.5))  # a grid's short run
    text = report.write_report(tmp_path, records=records).read_text()
    overview = text[text.index("## Overview"):text.index("## Summary")]
    # deo-adamw-ritz (1.5) is neither the paper's rule nor a recommendation: in no column
    assert f"| gpt | adamw: 2.005 | deo-adamw: 2.205 | {ours}: 1.905 |" in overview
    # a row whose runs never escaped is not the paper's best: none is left, a dash; the
    # baseline's cost is its steps + 1 (one gradient each), DEO's what it recorded
    assert f"| saddle | sgd: 41 | — | {recommended('sgd', 'saddle')}: 27 |" in overview
    assert "gpt-tune" not in overview and "## gpt-tune" in text  # in its own section only


def test_the_overview_ranks_by_the_share_of_runs_that_count_before_their_mean(tmp_path):
    # pgd escaped once in two seeds, cheaply; sgd escaped on both: sgd is the best baseline,
    # and a row some of whose runs did not count says how many did
    records = [make_record("saddle", name, seed, 0.0, escape_step=step, escape_threshold=0.5)
               for name, steps in (("pgd", (5, None)), ("sgd", (40, 42)), ("gd", (80, None)))
               for seed, step in enumerate(steps)]
    text = report.write_report(tmp_path, records=records).read_text()
    overview = text[text.index("## Overview"):text.index("## Summary")]
    assert "| saddle | sgd: 42 | — | — |" in overview
    records = [r for r in records if r["optimizer"] != "sgd"]
    text = report.write_report(tmp_path / "without-sgd", records=records).read_text()
    assert "| saddle | pgd: 6 (1/2 runs) | — | — |" in text
