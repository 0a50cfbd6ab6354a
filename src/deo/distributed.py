"""Global reductions over lists of tensors: the dot products and norms DEO needs.

DEO treats all trainable parameters as ONE vector, so every inner product is a sum
over tensors. Keeping the reductions in one place is what lets the optimizer run under
data parallelism unchanged:

* single process and DDP: every rank holds full, identical (all-reduced) gradients and the
  same N, so the local sum already is the global one and no communication is needed;
* FSDP2 and other DTensor layouts: each rank holds shards. The sum over this rank's shards is
  computed on the local tensors (``to_local()``), then one all-reduce per sharded mesh
  dimension (one in all for FSDP2's 1-D mesh, whatever the number of tensors) adds the
  partial sums of all ranks. Mesh dimensions along which a tensor is replicated are not
  summed over (that would count it twice).

All functions return plain 0-d tensors on the device of the inputs, identical on every rank,
and never synchronise with the host, so they are safe inside the optimizer's cheap step (an
all-reduce is a collective, not a host sync: with NCCL it is queued on the GPU stream).
Every rank must call them with the same list layout, as it does for any collective.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor


def dot(xs: list[Tensor], ys: list[Tensor]) -> Tensor:
    """sum_i <xs[i], ys[i]>, accumulated in the wider of the two dtypes."""
    if len(xs) != len(ys):
        raise ValueError(f"dot: lists differ in length ({len(xs)} vs {len(ys)})")
    if not xs:
        raise ValueError("dot: empty tensor lists")
    dtype = _widest_dtype([*xs, *ys])
    if launch_bound([*xs, *ys]):
        # one multi-tensor multiply, one concatenation, one sum: 3 kernels instead of 2 per
        # tensor, for more memory traffic; worth it where launches, not bytes, are the cost
        products = torch._foreach_mul(xs, ys)
        return torch.cat([t.reshape(-1) for t in products]).sum()
    if not _has_dtensor([*xs, *ys]):
        parts = [_flat_dot(x, y, dtype) for x, y in zip(xs, ys)]
        return torch.stack(parts).sum() if len(parts) > 1 else parts[0]
    pairs = [_local_pair(x, y) for x, y in zip(xs, ys)]
    return _sum_over_shards([(group, _flat_dot(x, y, dtype)) for group, x, y in pairs])


_CPU_CAST_CHUNK = 1 << 18  # elements widened at a time for a mixed-dtype dot on the CPU


def _flat_dot(x: Tensor, y: Tensor, dtype: torch.dtype) -> Tensor:
    """<x, y> in ``dtype``. torch.dot wants one dtype, so a narrower operand (a bf16 N) is
    widened; on the CPU in cache-sized chunks, since a tensor-sized temporary costs more in
    page faults than the dot itself (on a GPU the caching allocator makes it cheap)."""
    x, y = x.reshape(-1), y.reshape(-1)
    if x.dtype == y.dtype == dtype:  # the common case: no casts (each costs a dispatch)
        return torch.dot(x, y)
    if x.device.type != "cpu" or x.numel() <= _CPU_CAST_CHUNK:
        return torch.dot(x.to(dtype), y.to(dtype))
    return torch.stack([torch.dot(a.to(dtype), b.to(dtype)) for a, b in
                        zip(x.split(_CPU_CAST_CHUNK), y.split(_CPU_CAST_CHUNK))]).sum()


def gram(rows: list[list[Tensor]], cols: list[list[Tensor]]) -> Tensor:
    """The matrix G_ij = rows[i] . cols[j] of dot products between two lists of vectors.

    Accumulated tensor by tensor, one small (k x n) @ (n x m) product per parameter tensor,
    instead of k m separate dot products (the Ritz rule's 4 x 4 matrix: 16 dot products of 2
    kernels per tensor each). Transient memory: the k + m slices of one tensor. DTensors take
    the pairwise dot products, which reduce over shards.
    """
    if _has_dtensor([t for vector in (*rows, *cols) for t in vector]):
        return torch.stack([torch.stack([dot(r, c) for c in cols]) for r in rows])
    dtype = _widest_dtype([rows[0][0], cols[0][0]])
    total = None
    for index in range(len(rows[0])):
        left = torch.stack([r[index].reshape(-1) for r in rows]).to(dtype)
        right = torch.stack([c[index].reshape(-1) for c in cols]).to(dtype)
        part = left @ right.T
        total = part if total is None else total + part
    return total


LAUNCH_BOUND_NUMEL = 1 << 20  # mean elements per tensor under which a GPU pass is launch-bound
LAUNCH_BOUND_TOTAL = 1 << 26  # and at most this many in all: the path's temporaries stay small


def launch_bound(tensors: list[Tensor]) -> bool:
    """True for many small CUDA tensors of one float32/float64 dtype (no DTensor): there a
    per-tensor kernel costs more in launches than in bytes (the complex GPT: 39 tensors of
    274K elements on average), and multi-tensor kernels are the faster path. Their
    parameter-sized temporaries are why the total is capped (64M elements, 256 MB in float32):
    beyond it a model is large enough for launches not to matter."""
    first = tensors[0]
    if not (first.is_cuda and first.dtype in (torch.float32, torch.float64)):
        return False
    total = sum(t.numel() for t in tensors)
    return (all(t.dtype == first.dtype and t.is_cuda for t in tensors)
            and not _has_dtensor(tensors) and total < LAUNCH_BOUND_TOTAL
            and total < LAUNCH_BOUND_NUMEL * len(tensors))


def norm(xs: list[Tensor]) -> Tensor:
    """Euclidean norm of the concatenation of xs."""
    if not xs:
        raise ValueError("norm: empty tensor list")
    if not _has_dtensor(xs):
        norms = torch._foreach_norm(xs)
        dtype = _widest_dtype(norms)
        if any(n.dtype != dtype for n in norms):  # mixed dtypes only: a cast per tensor
            norms = [n.to(dtype) for n in norms]
        return torch.linalg.vector_norm(torch.stack(norms))
    locals_ = [_local(x) for x in xs]
    norms = torch._foreach_norm([t for _, t in locals_])
    dtype = _widest_dtype(norms)
    return _sum_over_shards([(group, n.to(dtype).square())
                             for (group, _), n in zip(locals_, norms)]).sqrt()


def copy_(dst: list[Tensor], src: list[Tensor]) -> None:
    """``torch._foreach_copy_(dst, src)`` that also takes DTensors (pairs of one layout),
    copied shard by shard: torch (2.13) registers no DTensor rule for ``_foreach_copy_``."""
    if not _has_dtensor([*dst, *src]):
        torch._foreach_copy_(dst, src)
        return
    for d, s in zip(dst, src):
        _check_same_layout(d, s)
    torch._foreach_copy_([_to_local(d) for d in dst], [_to_local(s) for s in src])


def shard_like(full: Tensor, like: Tensor) -> Tensor:
    """``full`` laid out like ``like``: itself for a plain tensor; for a DTensor, a DTensor on
    like's mesh with like's placements whose local shards are the slices of ``full`` (which
    must be identical on every rank: no data is sent)."""
    if not _is_dtensor(like):
        return full
    distribute_tensor = _dtensor_api("distribute_tensor")
    try:
        out = distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)
    except TypeError:  # torch < 2.6: no src_data_rank; rank 0's identical copy is scattered
        out = distribute_tensor(full, like.device_mesh, like.placements)
    if out.to_local().shape != like.to_local().shape:
        raise ValueError(f"shard_like: DTensor layout {like.placements} of a tensor shaped "
                         f"{tuple(like.shape)} gives local shape {tuple(out.to_local().shape)} "
                         f"here, the tensor holds {tuple(like.to_local().shape)}")
    return out


# -- helpers ---------------------------------------------------------------------------------

def _dtensor_type() -> type | None:
    """DTensor's class, or None while its module is not imported: then no DTensor exists, and
    a plain run does not pay for importing torch.distributed.tensor (about a second)."""
    for name in ("torch.distributed.tensor", "torch.distributed._tensor"):  # torch >= 2.5, 2.4
        dtensor = getattr(sys.modules.get(name), "DTensor", None)
        if dtensor is not None:
            return dtensor
    return None


def _is_dtensor(t: Tensor) -> bool:
    dtensor = _dtensor_type()
    return dtensor is not None and isinstance(t, dtensor)


def _has_dtensor(tensors: list[Tensor]) -> bool:
    dtensor = _dtensor_type()
    return dtensor is not None and any(isinstance(t, dtensor) for t in tensors)


def _dtensor_api(name: str):
    try:  # torch >= 2.5
        import torch.distributed.tensor as api
    except ImportError:  # pragma: no cover - torch 2.4
        import torch.distributed._tensor as api
    return getattr(api, name)


def _local(x: Tensor) -> tuple[tuple | None, Tensor]:
    """(reduction group, this rank's tensor). The group names the ranks whose partial sums
    must be added: (mesh, sharded mesh dims), or None for a tensor every rank holds whole."""
    if not _is_dtensor(x):
        return None, x
    if any(p.is_partial() for p in x.placements):  # pending sums: not a sharding, resolve them
        replicate = _dtensor_api("Replicate")()
        x = x.redistribute(x.device_mesh,
                           [replicate if p.is_partial() else p for p in x.placements])
    dims = tuple(i for i, p in enumerate(x.placements) if p.is_shard())
    return ((x.device_mesh, dims) if dims else None), x.to_local()


def _local_pair(x: Tensor, y: Tensor) -> tuple[tuple | None, Tensor, Tensor]:
    """(reduction group, x's local tensor, y's) for two tensors of one layout."""
    _check_same_layout(x, y)
    (group, x_local), (_, y_local) = _local(x), _local(y)
    return group, x_local, y_local


def _check_same_layout(x: Tensor, y: Tensor) -> None:
    if _is_dtensor(x) != _is_dtensor(y) or (
            _is_dtensor(x) and (x.device_mesh != y.device_mesh or x.placements != y.placements)):
        raise ValueError(
            "deo.distributed: a pair of tensors with different layouts: "
            f"{_describe(x)} and {_describe(y)}; N, gradients and parameters must share one "
            "layout (the same device mesh and placements)")


def _to_local(t: Tensor) -> Tensor:
    return t.to_local() if _is_dtensor(t) else t


def _describe(t: Tensor) -> str:
    if _is_dtensor(t):
        return f"DTensor{tuple(t.shape)} placements={t.placements} mesh={t.device_mesh}"
    return f"Tensor{tuple(t.shape)}"


def _sum_over_shards(parts: list[tuple[tuple | None, Tensor]]) -> Tensor:
    """Sum 0-d partial values; those of sharded tensors are summed over their ranks too (one
    all-reduce per reduction group, over each sharded mesh dimension's process group)."""
    import torch.distributed as dist

    groups: dict[tuple, list[Tensor]] = {}
    for group, value in parts:
        groups.setdefault(group, []).append(value)
    totals = []
    for group, values in groups.items():
        total = torch.stack(values).sum()
        if group is not None:
            mesh, dims = group
            for dim in dims:
                dist.all_reduce(total, op=dist.ReduceOp.SUM, group=mesh.get_group(dim))
        totals.append(total)
    return torch.stack(totals).sum() if len(totals) > 1 else totals[0]


def _widest_dtype(tensors: list[Tensor]) -> torch.dtype:
    dtypes = {t.dtype for t in tensors}  # usually one: no promote_types call per tensor
    dtype = dtypes.pop()
    for other in dtypes:
        dtype = torch.promote_types(dtype, other)
    return dtype
