"""Plots for docs/estimator.md from the JSON results in benchmarks/results/.

    python benchmarks/plot_estimator.py
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).parent / "results"
IMAGES = Path(__file__).parents[1] / "docs" / "img"
TRACKS = {"track_ritz_m0.jsonl": "ritz (batch by batch)",
          "track_ritz_m09.jsonl": "ritz, hessian_memory 0.9",
          "track_ritz_m08_w5.jsonl": "ritz, hessian_memory 0.8, ritz_window 5"}


def plot_probe() -> None:
    report = json.loads((RESULTS / "probe_small.json").read_text())
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for rule in report["rules"]:
        evals = [p["evaluations"] for p in rule["trace"]]
        left.plot(evals, [p["curvature_exact"] for p in rule["trace"]], label=rule["rule"])
        right.plot(evals, [p["cos_v_min"] for p in rule["trace"]], label=rule["rule"])
    left.axhline(report["lambda_min"], color="k", ls="--", lw=1, label="lambda_min (Lanczos)")
    left.set(xlabel="displaced-gradient evaluations", ylabel="N^T H N (exact)",
             title="curvature along N, fixed batch")
    right.set(xlabel="displaced-gradient evaluations", ylabel="|cos(N, v_min)|",
              title="alignment with v_min", ylim=(0, 1.02))
    for ax in (left, right):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(IMAGES / "estimator_probe.png", dpi=110)


def plot_tracking() -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, label in TRACKS.items():
        path = RESULTS / name
        if not path.exists():
            continue
        records = [json.loads(line) for line in path.read_text().splitlines()[1:]]
        steps = [r["step"] for r in records]
        left.plot(steps, [r["ratio"] for r in records], marker="o", label=label)
        right.plot(steps, [r["cos_v_min"] for r in records], marker="o", label=label)
    left.axhline(0.5, color="k", ls="--", lw=1, label="target 0.5")
    left.set(xlabel="training step", ylabel="(N^T H_eval N) / lambda_min(H_eval)",
             title="share of the eval batch's lambda_min along N")
    right.set(xlabel="training step", ylabel="|cos(N, v_min(H_eval))|",
              title="alignment during training", ylim=(0, 1.02))
    for ax in (left, right):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(IMAGES / "estimator_tracking.png", dpi=110)


if __name__ == "__main__":
    IMAGES.mkdir(parents=True, exist_ok=True)
    plot_probe()
    plot_tracking()
