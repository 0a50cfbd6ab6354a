"""DEO around AdamW under DistributedDataParallel, ready for torchrun.

    torchrun --standalone --nproc_per_node=2 examples/train_ddp.py --steps 200

Each rank trains a replica of a small MLP on its share of every global batch (a
DistributedSampler). The closure runs the forward pass through the DDP-wrapped model, so the
displaced gradient of DEO's probe is all-reduced by DDP like the main one; N is drawn from
``seed`` and is the same on every rank, so the replicas stay identical (checked at the end).
Backend: NCCL with one GPU per rank when CUDA is available (and --cpu is not given), gloo on
the CPU otherwise. Without torchrun the script trains in one process, without DDP.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import deo


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch (all ranks)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--alpha", type=float, default=5.0)
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--rotation", choices=["oja", "ritz"], default="ritz")
    parser.add_argument("--seed", type=int, default=0, help="model, data and N (every rank)")
    parser.add_argument("--cpu", action="store_true", help="gloo on the CPU even with CUDA")
    return parser.parse_args()


def make_data(seed: int, samples: int = 4096) -> TensorDataset:
    """A regression task from a fixed random teacher network, identical on every rank."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, 16, generator=gen)
    teacher = torch.randn(16, 32, generator=gen) / 4, torch.randn(32, 1, generator=gen) / 6
    y = torch.tanh(x @ teacher[0]) @ teacher[1] + 0.05 * torch.randn(samples, 1, generator=gen)
    return TensorDataset(x, y)


def main() -> None:
    args = parse_args()
    distributed = "RANK" in os.environ  # set by torchrun
    use_cuda = torch.cuda.is_available() and not args.cpu
    if distributed:
        dist.init_process_group("nccl" if use_cuda else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(1)  # a tiny model: threads only contend
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} is not divisible by {world} ranks")

    torch.manual_seed(args.seed)  # the same initial weights on every rank (DDP also broadcasts)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Dropout(0.1),
                                torch.nn.Linear(64, 64), torch.nn.Tanh(),
                                torch.nn.Linear(64, 1)).to(device)
    net = DistributedDataParallel(model, device_ids=[device.index] if use_cuda else None) \
        if distributed else model
    opt = deo.DEO(net.parameters(), base=torch.optim.AdamW, lr=args.lr, weight_decay=0.01,
                  alpha=args.alpha, interval=args.interval, rotation=args.rotation,
                  seed=args.seed, max_grad_norm=1.0)
    torch.manual_seed(args.seed + 1 + rank)  # dropout masks differ between ranks, as usual

    data = make_data(args.seed)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, seed=args.seed) \
        if distributed else None
    loader = DataLoader(data, batch_size=args.batch_size // world, sampler=sampler,
                        shuffle=sampler is None, drop_last=True)

    step, epoch = 0, 0
    while step < args.steps:
        if sampler is not None:
            sampler.set_epoch(epoch)
        for x, y in loader:
            x, y = x.to(device), y.to(device)

            def closure(x=x, y=y):
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(net(x), y)  # through DDP: all-reduced
                loss.backward()
                return loss

            loss = opt.step(closure)
            step += 1
            if step % 50 == 0 or step == args.steps:
                mean_loss = loss.detach().clone()
                if distributed:
                    dist.all_reduce(mean_loss)
                    mean_loss /= world
                if rank == 0:
                    print(f"step {step:5d}  loss {mean_loss.item():.4f}  "
                          f"curvature along N {opt.curvature.item():+.3g}  "
                          f"probes {int(opt.stats['extra_gradients'])}", flush=True)
            if step == args.steps:
                break
        epoch += 1

    if distributed:  # the replicas must not drift apart: compare every rank with rank 0
        mine = torch.cat([t.detach().reshape(-1).float()
                          for t in [*model.parameters(), *opt.direction]])
        first = mine.clone()
        dist.broadcast(first, src=0)
        flag = torch.tensor([0 if torch.equal(mine, first) else 1], device=device)
        dist.all_reduce(flag)
        if rank == 0:
            print(f"parameters and N identical on all {world} ranks: {int(flag.item()) == 0}")
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
