"""How noisy is a minibatch's curvature along the shared minimum-curvature direction?

Trains the small character GPT with AdamW (the paper's recipe) for K steps, computes the
Hessian's v_min on a fixed 96-sequence evaluation batch (Lanczos), then measures the curvature
c_b = v^T H_b v along that SAME v on many 12-sequence training batches b. If the spread of c_b
dwarfs its mean, a probe that sees one batch cannot tell the shared direction from noise, and
any estimator has to average over about (2 std / |mean|)^2 batches per decision. It also
measures v's curvature on a second, disjoint 96-sequence batch, and that batch's own lambda_min:
if v's negative curvature does not carry over, it belongs to the first batch, not the data.

    python benchmarks/curvature_noise.py --data ../shared/data/shakespeare_char/input.txt
Writes benchmarks/results/curvature_noise.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from deo import hessian
from deo.bench.data import load_corpus
from deo.bench.estimator import EstimatorConfig, train_gpt
from deo.bench.models import math_attention


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=None)
    parser.add_argument("--train-steps", type=int, default=500)
    parser.add_argument("--batches", type=int, default=32)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                             "curvature_noise.json"))
    args = parser.parse_args()
    corpus = load_corpus(args.data)
    model = train_gpt(corpus, EstimatorConfig(data=args.data, train_steps=args.train_steps))
    params = list(model.parameters())
    block = model.config.block_size
    eval_batch = corpus.get_batch("train", 96, block, torch.Generator().manual_seed(10_000))
    second_batch = corpus.get_batch("train", 96, block, torch.Generator().manual_seed(20_000))
    gen = torch.Generator().manual_seed(7)
    with math_attention(model):
        truth = hessian.extreme_eigenpairs(lambda: model(*eval_batch)[1], params, tol=1e-2)
        v = truth.v_min
        second = hessian.extreme_eigenpairs(lambda: model(*second_batch)[1], params, tol=1e-2)
        hv_second = hessian.hessian_vector_product(lambda: model(*second_batch)[1], params, v)
        second_curvature = sum(float((a.double() * b.double()).sum())
                               for a, b in zip(v, hv_second))
        curvatures = []
        for _ in range(args.batches):
            batch = corpus.get_batch("train", 12, block, gen)
            hv = hessian.hessian_vector_product(lambda b=batch: model(*b)[1], params, v)
            curvatures.append(sum(float((a.double() * b.double()).sum())
                                  for a, b in zip(v, hv)))
    mean, std = statistics.fmean(curvatures), statistics.stdev(curvatures)
    result = {"train_steps": args.train_steps, "eval_lambda_min": truth.lambda_min,
              "eval_lambda_max": truth.lambda_max, "batch_curvature_mean": mean,
              "batch_curvature_std": std, "batches": args.batches,
              "batches_for_2_sigma": (2 * std / abs(mean)) ** 2,
              "second_batch_lambda_min": second.lambda_min,
              "second_batch_curvature_along_v": second_curvature,
              "cos_v_min_first_second": abs(hessian.cosine(v, second.v_min)),
              "curvatures": curvatures}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "curvatures"}, indent=1))


if __name__ == "__main__":
    main()
