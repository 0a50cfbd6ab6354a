"""The saddle suite, counted in gradient evaluations: every optimizer at its best lr.

Each (problem, optimizer) runs over one lr grid shared by everyone (``LRS``) and ``--seeds``
seeds, from within about 1e-3 of the saddle; a run ends at its escape step (the first step
whose loss is half-way from the saddle's loss to the minimum), and its cost is every gradient
evaluated up to there, DEO's probes and escape trials included (``escape_evaluations``). A run
that does not escape within ``--steps`` costs all of them (censored). Per problem and
optimizer the table shows the lr with the lowest median cost and that median, and each DEO
variant's ratio to its base at their own best lrs.

    python benchmarks/saddle_suite.py --split selection --out benchmarks/results/saddle-suite-cpu
    python benchmarks/saddle_suite.py --split judgment --out benchmarks/results/saddle-suite-cpu

``selection`` holds the problems the recommendation was chosen on (instance 0, seeds 0-4);
``judgment`` the others, with fresh instances (instance 1) and seeds 5-9. Records are
appended to OUT/<split>.jsonl as they finish (--resume-safe: finished keys are skipped);
OUT/<split>.md is the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from deo.bench.octopus import Octopus
from deo.bench.optimizers import frozen
from deo.bench.optimizers import recommended as bench_recommended
from deo.bench.runner import append_record, run_one
from deo.bench.saddle import DeepLinear, MatrixSensing, MonkeySaddle, QuadraticSaddle
from deo.bench.saddle_problems import (
    AsymmetricMF,
    PhaseRetrieval,
    SymmetricMF,
    TeacherStudent,
    TensorDecomposition,
)

LRS = (0.01, 0.03, 0.1, 0.3)  # one grid for every optimizer and problem
STEPS = 400

# (factory taking instance_seed, kind)
SELECTION = {
    "saddle-xy": (lambda instance: QuadraticSaddle(x0=1e-3, y_scale=1e-3, steps=STEPS), "strict"),
    "matrix-sensing": (lambda instance: MatrixSensing(instance_seed=instance, steps=STEPS),
                       "strict"),
    "symmetric-mf": (lambda instance: SymmetricMF(instance_seed=instance, steps=STEPS),
                     "strict"),
    "monkey-saddle": (lambda instance: MonkeySaddle(start_radius=1e-2, steps=STEPS),
                      "degenerate"),
    "deep-linear-3": (lambda instance: DeepLinear(depth=3, instance_seed=instance, steps=STEPS),
                      "degenerate"),
}
JUDGMENT = {
    "phase-retrieval": (lambda instance: PhaseRetrieval(instance_seed=instance, steps=STEPS),
                        "strict"),
    "asymmetric-mf": (lambda instance: AsymmetricMF(instance_seed=instance, steps=STEPS),
                      "strict"),
    "tensor-decomposition": (lambda instance: TensorDecomposition(instance_seed=instance,
                                                                  steps=STEPS), "strict"),
    "teacher-student": (lambda instance: TeacherStudent(instance_seed=instance, steps=STEPS),
                        "strict"),
    "deep-linear-4": (lambda instance: DeepLinear(depth=4, instance_seed=instance, steps=STEPS),
                      "degenerate"),
    "deep-linear-5": (lambda instance: DeepLinear(depth=5, instance_seed=instance, steps=STEPS),
                      "degenerate"),
    # Du et al. 2017's tube of 3 saddles (two to leave): GD's time grows geometrically with d;
    # added after the fourth configuration was frozen, and judged like the rest of this split
    "octopus-3": (lambda instance: Octopus(dimension=3, steps=1500), "strict"),
}
SPLITS = {"selection": (SELECTION, 0, range(0, 5)), "judgment": (JUDGMENT, 1, range(5, 10))}

CANDIDATES = {  # chosen among on the selection split
    "search-f1": "alpha=0,escape_step=1,interval=1,escape_rule=search,displacement=auto",
    "search-f5": "alpha=0,escape_step=1,interval=5,escape_rule=search,displacement=auto",
    "search-f2": "alpha=0,escape_step=1,interval=2,escape_rule=search,displacement=auto",
    "search-f10": "alpha=0,escape_step=1,interval=10,escape_rule=search,displacement=auto",
}


def optimizers(split: str) -> list[str]:
    names = ["gd", "sgd", "adam", "pgd"]
    for base in ("gd", "sgd", "adam"):
        names.append(frozen(base, "alpha=0,escape_step=0.25,interval=5,escape_rule=checked"))
        if split == "selection":
            names += [f"deo-{base}-ritz:{settings}" for settings in CANDIDATES.values()]
        else:
            names.append(bench_recommended(base, "saddle"))
    names.append(f"deo-oracle-gd:{bench_recommended('gd', 'saddle').partition(':')[2]}")
    return names


def base_of(name: str) -> str | None:
    if not name.startswith("deo-"):
        return None
    head = name.partition(":")[0].removeprefix("deo-").removeprefix("oracle-")
    return head.partition("-")[0]


def run(split: str, out: Path, seeds: int | None) -> list[dict]:
    problems, instance, seed_range = SPLITS[split]
    seed_range = list(seed_range)[:seeds] if seeds else list(seed_range)
    path = out / f"{split}.jsonl"
    done = set()
    if path.exists():
        done = {json.loads(line)["key"] for line in path.read_text().splitlines() if line}
    for problem, (make, _) in problems.items():
        for name in optimizers(split):
            for lr in LRS:
                for seed in seed_range:
                    key = f"{problem}|{name}|{lr:g}|{seed}"
                    if key in done:
                        continue
                    task = make(instance)
                    task.lr, task.stop_on_escape = lr, True
                    record = run_one(task, name, seed, progress=False)
                    append_record(path, {"key": key, "problem": problem, "optimizer": name,
                                         "lr": lr, "seed": seed, "status": record.status,
                                         "escape_step": record.escape_step,
                                         "escape_evaluations": record.escape_evaluations,
                                         "gradient_evaluations": record.gradient_evaluations})
    records = {}  # one record per key: a second process on the same file may repeat some
    for line in path.read_text().splitlines():
        if line:
            record = json.loads(line)
            records.setdefault(record["key"], record)
    return list(records.values())


def cost(record: dict) -> int:
    evaluations = record["escape_evaluations"]
    return evaluations if evaluations is not None else record["gradient_evaluations"]


def table(split: str, records: list[dict]) -> str:
    problems = SPLITS[split][0]
    by: dict[tuple[str, str, float], list[dict]] = {}
    for r in records:
        by.setdefault((r["problem"], r["optimizer"], r["lr"]), []).append(r)
    names = optimizers(split)
    lines = [f"# Saddle suite, {split} split", "",
             "Median gradient evaluations to escape (probes and trials included) at each "
             "optimizer's best lr of " + ", ".join(f"{lr:g}" for lr in LRS) + "; "
             "(k/n: runs that escaped at that lr); DEO rows: the ratio to their base at its "
             "own best lr.", "",
             "| problem | kind | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    best: dict[tuple[str, str], tuple[float, float]] = {}
    for problem, (_, kind) in problems.items():
        cells = []
        for name in names:
            options = []
            for lr in LRS:
                runs = by.get((problem, name, lr), [])
                if runs:
                    options.append((statistics.median(cost(r) for r in runs), lr, runs))
            if not options:
                cells.append("—")
                continue
            median, lr, runs = min(options, key=lambda o: (o[0], o[1]))
            best[problem, name] = (median, lr)
            escaped = sum(r["escape_evaluations"] is not None for r in runs)
            cells.append(f"{median:g} @ {lr:g} ({escaped}/{len(runs)})")
        for i, name in enumerate(names):
            base = base_of(name)
            if base and (problem, base) in best and (problem, name) in best:
                cells[i] += f" = {best[problem, name][0] / best[problem, base][0]:.2f}x"
        lines.append(f"| {problem} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", choices=list(SPLITS), required=True)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/saddle-suite-cpu"))
    parser.add_argument("--seeds", type=int, default=None, help="fewer seeds (a quick look)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    records = run(args.split, args.out, args.seeds)
    text = table(args.split, records)
    (args.out / f"{args.split}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
