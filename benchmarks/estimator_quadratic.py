"""Estimator benchmark on a closed-form quadratic: evaluations until N finds v_min.

H = Q diag(spectrum) Q^T with d = 200 eigenvalues evenly spaced in [-1, 1000]. For each rule,
budget and loss scale, DEO probes every step (parameters frozen, alpha = 0) and we count the
displaced-gradient evaluations until cos(N, v_min) >= 0.99 and N^T H N is within 1% of
lambda_min. Writes benchmarks/results/estimator_quadratic.{json,md}.

    python benchmarks/estimator_quadratic.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

import deo

RESULTS = Path(__file__).parent / "results"
LIMIT = 1000  # evaluations; "not reached" beyond


def quadratic(d: int = 200, seed: int = 1):
    spectrum = torch.linspace(-1.0, 1000.0, d, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    return q @ torch.diag(spectrum) @ q.T, q[:, 0]


def evaluations_to_target(hessian, v_min, scale, **deo_kwargs):
    hessian = scale * hessian
    lam_min = float(v_min @ hessian @ v_min)
    x = torch.randn(hessian.shape[0], dtype=torch.float64, requires_grad=True,
                    generator=torch.Generator().manual_seed(5))
    opt = deo.DEO([x], base=torch.optim.SGD, lr=0.0, alpha=0.0, interval=1, displacement=1e-3,
                  **deo_kwargs)

    def closure():
        x.grad = None
        loss = 0.5 * x @ hessian @ x
        loss.backward()
        return loss

    cos = curvature = float("nan")
    while int(opt.stats["extra_gradients"]) < LIMIT:
        opt.step(closure)
        (n,) = opt.direction
        cos, curvature = abs(float(n @ v_min)), float(n @ hessian @ n)
        if cos >= 0.99 and abs(curvature - lam_min) <= 0.01 * abs(lam_min):
            return int(opt.stats["extra_gradients"]), cos, curvature / scale
    return None, cos, curvature / scale


def main() -> None:
    hessian, v_min = quadratic()
    cases = [("oja", {"rotation": "oja"}),  # the paper's default rotation_lr = 1e-3
             ("oja lr=1e-4", {"rotation": "oja", "rotation_lr": 1e-4}),
             *[(f"ritz budget={b}", {"rotation": "ritz", "probes_per_update": b})
               for b in (1, 2, 5, 10)]]
    rows = []
    for name, kwargs in cases:
        for scale in (1.0, 1000.0):
            count, cos, curvature = evaluations_to_target(hessian, v_min, scale, **kwargs)
            rows.append({"rule": name, "loss_scale": scale, "evaluations": count,
                         "cos_v_min": cos, "curvature": curvature})
            print(rows[-1])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "estimator_quadratic.json").write_text(json.dumps(rows, indent=1))
    lines = ["| rule | loss scale | evaluations to target | final cos(N, v_min) "
             "| final C / scale |",
             "|---|---|---|---|---|"]
    for r in rows:
        reached = r["evaluations"] if r["evaluations"] is not None else f"not in {LIMIT}"
        lines.append(f"| {r['rule']} | {r['loss_scale']:g} | {reached} | {r['cos_v_min']:.4f} "
                     f"| {r['curvature']:+.4f} |")
    (RESULTS / "estimator_quadratic.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
