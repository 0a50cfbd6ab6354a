"""Worker for tests/test_distributed.py: DEO under DDP and FSDP2, launched by torchrun.

    python -m torch.distributed.run --standalone --nproc_per_node=2 \\
        tests/distributed_worker.py OUT_DIR [CONFIG ...]

Every rank trains the same tiny float64 MLP with DEO around AdamW on its half of each global
batch (gloo, CPU) and writes ``OUT_DIR/<config>.rank<r>.pt``: its parameters and N after every
step (whole under DDP, its shards under FSDP2), the initial N, the curvature, the probe count
and the tensor-value reads in a cheap step. The test compares the ranks with
each other and with ``run_config(config)`` without a process group: one process on the whole
global batch. ``OUT_DIR/reductions.rank<r>.pt`` holds sharded dot products and norms next to
the same reductions on the full tensors.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

import deo
from deo.distributed import dot, norm

STEPS = 30
INTERVAL = 4  # 8 probe steps in 30 (0, 4, ..., 28); step 30 is a cheap one
GLOBAL_BATCH = 16
WIDTH = 15  # odd: FSDP2 shards unevenly (8 + 7 rows), the 1-row output layer leaves rank 1 empty

CONFIGS = {
    "ddp-oja": {"wrap": "ddp", "rotation": "oja"},
    "ddp-ritz": {"wrap": "ddp", "rotation": "ritz", "max_grad_norm": 0.5},
    # gradients are views into DDP's communication buckets, which every backward overwrites
    "ddp-bucket-view-ritz": {"wrap": "ddp-bucket-view", "rotation": "ritz"},
    "fsdp2-oja": {"wrap": "fsdp2", "rotation": "oja"},
    "fsdp2-ritz": {"wrap": "fsdp2", "rotation": "ritz", "max_grad_norm": 0.5},
    "fsdp2-oja-tensor-scope": {"wrap": "fsdp2", "rotation": "oja", "scope": "tensor"},
    # the checked escape decides from gradients: every rank must take the same decision
    # (escape_step 1.0: long enough that some trials are undone, 1 of 6 here)
    "ddp-ritz-checked-escape": {"wrap": "ddp", "rotation": "ritz", "escape_rule": "checked"},
    "fsdp2-ritz-checked-escape": {"wrap": "fsdp2", "rotation": "ritz",
                                  "escape_rule": "checked"},
    # the line search decides from gradients too, over several segments, and "auto" reads the
    # parameters' norm: over DTensor shards it must be the whole vector's on every rank
    "ddp-ritz-search-auto": {"wrap": "ddp", "rotation": "ritz", "escape_rule": "search",
                             "displacement": "auto"},
    "fsdp2-ritz-search-auto": {"wrap": "fsdp2", "rotation": "ritz", "escape_rule": "search",
                               "displacement": "auto"},
    # the same runs with the passes in the training loop (begin_step/first_step/second_step):
    # TWINS pairs each with its step(closure) config, which it must match bit for bit
    "ddp-ritz-two-phase": {"wrap": "ddp", "rotation": "ritz", "max_grad_norm": 0.5,
                           "two_phase": True},
    "ddp-bucket-view-ritz-checked-escape-two-phase": {
        "wrap": "ddp-bucket-view", "rotation": "ritz", "escape_rule": "checked",
        "two_phase": True},
    "ddp-bucket-view-ritz-checked-escape": {"wrap": "ddp-bucket-view", "rotation": "ritz",
                                            "escape_rule": "checked"},
    "fsdp2-ritz-two-phase": {"wrap": "fsdp2", "rotation": "ritz", "max_grad_norm": 0.5,
                             "two_phase": True},
}
TWINS = {"ddp-ritz-two-phase": "ddp-ritz",
         "ddp-bucket-view-ritz-checked-escape-two-phase": "ddp-bucket-view-ritz-checked-escape",
         "fsdp2-ritz-two-phase": "fsdp2-ritz"}


def fsdp2_available() -> bool:
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return False
    return True


def build_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, WIDTH), torch.nn.Tanh(), torch.nn.Linear(WIDTH, WIDTH),
        torch.nn.Tanh(), torch.nn.Linear(WIDTH, 1)).double()


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(GLOBAL_BATCH, 6, generator=gen, dtype=torch.float64)
    return x, torch.sin(3 * x.sum(dim=1, keepdim=True))


def local(tensors) -> list[torch.Tensor]:
    """Copies of this rank's parts: whole tensors, or the local shards of DTensors (recording
    them costs no communication; ``assemble`` puts FSDP2's shards together)."""
    return [_local(t).detach().clone() for t in tensors]


def assemble(per_rank: list[list[torch.Tensor]]) -> torch.Tensor:
    """One flat vector from the ranks' ``local`` lists: rank 0's tensors when they are whole
    (one rank, DDP); FSDP2's dim-0 shards (Shard(0) on a 1-D mesh) concatenated otherwise."""
    if len(per_rank) == 1:
        return torch.cat([t.reshape(-1) for t in per_rank[0]])
    return torch.cat([torch.cat(shards).reshape(-1) for shards in zip(*per_rank)])


def wrap_model(model: torch.nn.Module, wrap: str | None) -> torch.nn.Module:
    if wrap is None:
        return model
    if wrap in ("ddp", "ddp-bucket-view"):
        return torch.nn.parallel.DistributedDataParallel(
            model, gradient_as_bucket_view=wrap == "ddp-bucket-view")
    if wrap == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    raise ValueError(f"unknown wrap {wrap!r}")


def run_config(name: str, distributed: bool = False) -> dict:
    """Train config ``name``; without ``distributed``, in this process on the global batch."""
    config = CONFIGS[name]
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    model = wrap_model(build_model(), config["wrap"] if distributed else None)
    params = list(model.parameters())
    opt = deo.DEO(params, base=torch.optim.AdamW, lr=1e-2, weight_decay=0.1, alpha=5.0,
                  interval=INTERVAL, displacement=config.get("displacement", 1e-3),
                  rotation=config["rotation"],
                  rotation_lr=0.2, scope=config.get("scope", "global"), seed=7,
                  max_grad_norm=config.get("max_grad_norm"),
                  escape_step=1.0 if "escape_rule" in config else 0.0,
                  escape_rule=config.get("escape_rule", "fixed"))
    result = {"initial_direction": local(opt.direction), "params": [], "directions": [],
              "losses": [],
              "local_shapes": [tuple(_local(p).shape) for p in params],
              "full_shapes": [tuple(p.shape) for p in params],
              "layouts_match": all(_layout(n) == _layout(p)
                                   for n, p in zip(opt.direction, params))}
    share = GLOBAL_BATCH // world
    for step in range(STEPS):
        x, y = global_batch(step)
        x, y = x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        if config.get("two_phase"):  # the same passes, run by the loop instead of by DEO
            opt.begin_step()
            loss = closure()
            while opt.first_step(loss):
                opt.second_step(closure())
            opt.step()
        else:
            loss = opt.step(closure)
        result["losses"].append(loss.detach())
        result["params"].append(local(params))
        result["directions"].append(local(opt.direction))
    result["curvature"] = opt.curvature.clone()
    result["extra_gradients"] = int(opt.stats["extra_gradients"])
    result["skipped_probes"] = int(opt.stats["skipped_probes"])
    result["inconsistent_probes"] = int(opt.stats["inconsistent_probes"])
    result["escapes"] = (int(opt.stats["escapes"]), int(opt.stats["escape_trials"]))
    if distributed:
        result["cheap_step_host_reads"] = cheap_step_host_reads(model, opt, rank, share)
    return result


SYNCING_METHODS = ["item", "tolist", "__bool__", "__float__", "__int__", "__index__"]


def cheap_step_host_reads(model, opt, rank: int, share: int) -> list[str]:
    """The tensor-value reads (host syncs on a GPU) in DEO's part of a cheap step, after the
    recorded run: the base optimizer's step is a no-op there (torch's CPU optimizers read
    their step counter with .item(), which is the base's business, not DEO's)."""
    assert opt.steps % opt.interval != 0, "the run must end before a cheap step"
    x, y = global_batch(STEPS)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x[rank * share:(rank + 1) * share]),
                                 y[rank * share:(rank + 1) * share]).backward()
    reads, originals = [], {name: getattr(torch.Tensor, name) for name in SYNCING_METHODS}

    def recorder(name):
        def read(self, *args, **kwargs):
            reads.append(name)
            return originals[name](self, *args, **kwargs)
        return read

    opt.base.step = lambda closure=None: None
    try:
        for name in SYNCING_METHODS:
            setattr(torch.Tensor, name, recorder(name))
        opt.step()
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)
    return reads


def _layout(t: torch.Tensor):
    return (str(getattr(t, "device_mesh", None)), tuple(getattr(t, "placements", ())),
            tuple(_local(t).shape))


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def reductions() -> dict:
    """dot / norm over DTensors (uneven and empty shards, replicated, mixed with plain)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    gen = torch.Generator().manual_seed(3)
    xs = [torch.randn(15, 4, generator=gen), torch.randn(1, 7, generator=gen),
          torch.randn(5, generator=gen, dtype=torch.float64)]
    ys = [torch.randn_like(x) for x in xs]
    layouts = [[Shard(0)], [Shard(0)], [Replicate()]]
    dx = [distribute_tensor(x, mesh, p) for x, p in zip(xs, layouts)]
    dy = [distribute_tensor(y, mesh, p) for y, p in zip(ys, layouts)]
    plain_x, plain_y = torch.randn(3, generator=gen), torch.randn(3, generator=gen)
    return {
        "dot": (dot(dx, dy), dot(xs, ys)),
        "norm": (norm(dx), norm(xs)),
        "dot_mixed": (dot([*dx, plain_x], [*dy, plain_y]), dot([*xs, plain_x], [*ys, plain_y])),
        "norm_mixed": (norm([*dx, plain_x]), norm([*xs, plain_x])),
        "replicated_only": (norm(dx[2:]), norm(xs[2:])),
        "types": (type(dot(dx, dy)).__name__, type(norm(dx)).__name__),
    }


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    out = Path(argv[0])
    names = argv[1:] or [n for n, c in CONFIGS.items()
                         if c["wrap"] != "fsdp2" or fsdp2_available()]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    try:
        for name in names:
            torch.save(run_config(name, distributed=True), out / f"{name}.rank{rank}.pt")
        if fsdp2_available():
            torch.save(reductions(), out / f"reductions.rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Everything is written and the process group is gone: what can still fail is the
    # interpreter's exit (test_distributed.py knows the one upstream abort that happens there).
    (out / done_marker(rank)).write_text("done")


def done_marker(rank: int) -> str:
    return f"done.rank{rank}"


if __name__ == "__main__":
    main(sys.argv[1:])
