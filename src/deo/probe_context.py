"""What the probe pass must see exactly as the main pass did, and must leave untouched.

The displaced gradient is compared with the main one at a displacement of about 1e-2, so any
difference that does not come from the displacement swamps the finite difference:

* randomness: dropout masks (and any other random op) must be identical in both passes, so
  the probe replays the RNG state captured before the main pass, and afterwards the RNG is
  put back where the main pass left it, so the probe is invisible to the rest of training;
* module buffers: BatchNorm running statistics (and any other buffer a forward pass writes)
  must not be updated by the probe, so every buffer of every module that runs during the
  probe is saved at its first call and restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def capture_rng_state() -> dict:
    """The CPU generator's state and, where CUDA is in use, every CUDA device's."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def frozen_module_buffers() -> Iterator[None]:
    """Restore, on exit, every buffer of every nn.Module whose forward ran inside the block.

    A global forward pre-hook sees each module before it runs, so DEO needs no reference to
    the model: whatever the closure calls is covered.
    """
    saved: dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def snapshot(module: nn.Module, args) -> None:
        if module not in saved:
            saved[module] = [(b, b.detach().clone()) for b in module.buffers(recurse=False)]

    handle = nn.modules.module.register_module_forward_pre_hook(snapshot)
    try:
        yield
    finally:
        handle.remove()
        with torch.no_grad():
            for buffers in saved.values():
                for live, copy in buffers:
                    live.copy_(copy)
