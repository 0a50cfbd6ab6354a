"""Global reductions over lists of tensors: the dot products and norms DEO needs.

DEO treats all trainable parameters as ONE vector, so every inner product is a sum
over tensors. Keeping the reductions in one place is what lets the optimizer run under
data parallelism unchanged:

* single process and DDP: every rank holds full, identical (all-reduced) gradients and the
  same N, so the local sum already is the global one and no communication is needed;
* FSDP2 (DTensor shards): each rank holds a shard, so the partial sums have to be
  reduced over the mesh. That path is not supported yet.

All functions return 0-d tensors on the device of the inputs and never synchronise with
the host, so they are safe inside the optimizer's cheap step.
"""

from __future__ import annotations

import torch
from torch import Tensor


def dot(xs: list[Tensor], ys: list[Tensor]) -> Tensor:
    """sum_i <xs[i], ys[i]>, accumulated in the wider of the two dtypes."""
    if len(xs) != len(ys):
        raise ValueError(f"dot: lists differ in length ({len(xs)} vs {len(ys)})")
    if not xs:
        raise ValueError("dot: empty tensor lists")
    dtype = _widest_dtype([*xs, *ys])
    parts = [torch.dot(x.reshape(-1).to(dtype), y.reshape(-1).to(dtype)) for x, y in zip(xs, ys)]
    return torch.stack(parts).sum() if len(parts) > 1 else parts[0]


def norm(xs: list[Tensor]) -> Tensor:
    """Euclidean norm of the concatenation of xs."""
    if not xs:
        raise ValueError("norm: empty tensor list")
    norms = torch._foreach_norm(xs)
    dtype = _widest_dtype(norms)
    return torch.linalg.vector_norm(torch.stack([n.to(dtype) for n in norms]))


def _widest_dtype(tensors: list[Tensor]) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype
