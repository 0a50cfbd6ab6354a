"""A whole training run saved at step k and resumed equals the unbroken run, bit for bit.

torch's own state_dicts are the whole checkpoint: model, DEO, lr scheduler, GradScaler, the
global RNG (dropout) and the data generator, saved to a file and read back with
torch.load(weights_only=True). test_bit_identity covers the oja rule with StepLR, test_ritz
the ritz rule alone; here: ritz mid-cycle with carried Hessian products, warm-up + cosine,
a shuffling DataLoader resumed mid-epoch, clipping and loss scaling.
"""

import itertools

import pytest
import torch

import deo
from helpers import MLP

STEPS, BATCHES_PER_EPOCH = 20, 6


def dataset():
    x = torch.randn(16 * BATCHES_PER_EPOCH, 6, generator=torch.Generator().manual_seed(3))
    return torch.utils.data.TensorDataset(x, torch.sin(x.sum(dim=1, keepdim=True)))


def build(seed):
    """Model, optimizer, scheduler, data; `seed` changes everything a checkpoint restores."""
    torch.manual_seed(seed)
    model = MLP(dropout=0.3, batchnorm=True)
    opt = deo.DEO(model.parameters(), base=torch.optim.AdamW, lr=1e-2, weight_decay=0.1,
                  interval=3, rotation="ritz", probes_per_update=1, hessian_memory=0.5,
                  displacement=1e-2, max_grad_norm=1.0, seed=seed)
    scheduler = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=4),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS - 4)], milestones=[4])
    data = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset(), batch_size=16, shuffle=True, generator=data)
    return model, opt, scheduler, loader


class Run:
    def __init__(self, seed=0, scaler=False):
        self.model, self.opt, self.scheduler, self.loader = build(seed)
        self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=5,
                                           enabled=scaler)
        self.step = 0
        self.epoch_start = self.loader.generator.get_state()  # the shuffle of this epoch
        self.batches = iter(self.loader)
        self.losses = []

    def train_until(self, stop):
        while self.step < stop:
            if self.step % BATCHES_PER_EPOCH == 0 and self.step > 0:
                self.epoch_start = self.loader.generator.get_state()
                self.batches = iter(self.loader)
            x, y = next(self.batches)

            def closure(x=x, y=y):
                self.opt.zero_grad()
                loss = torch.nn.functional.mse_loss(self.model(x), y)
                self.scaler.scale(loss).backward()
                return loss

            self.losses.append(self.opt.step(closure, grad_scaler=self.scaler))
            self.scheduler.step()
            self.step += 1
        self.rng = torch.get_rng_state()

    def save(self, path):
        torch.save({"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                    "rng": torch.get_rng_state(), "data": self.epoch_start,
                    "step": self.step}, path)

    def load(self, path):
        checkpoint = torch.load(path, weights_only=True)
        self.model.load_state_dict(checkpoint["model"])
        self.opt.load_state_dict(checkpoint["opt"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        torch.set_rng_state(checkpoint["rng"])
        self.step = checkpoint["step"]
        # the epoch's shuffle again, minus the batches already trained on
        self.epoch_start = checkpoint["data"]
        self.loader.generator.set_state(self.epoch_start)
        self.batches = itertools.islice(iter(self.loader), self.step % BATCHES_PER_EPOCH, None)


@pytest.mark.parametrize("scaler", [False, True], ids=["fp32", "grad_scaler"])
@pytest.mark.parametrize("k", [7, 10])  # after the 3rd probe (ritz mid-cycle), the 4th
def test_run_resumed_at_step_k_equals_the_unbroken_run(tmp_path, k, scaler):
    unbroken = Run(scaler=scaler)
    unbroken.train_until(STEPS)

    first = Run(scaler=scaler)
    first.train_until(k)
    first.save(tmp_path / "run.pt")
    resumed = Run(seed=99, scaler=scaler)  # other weights, N, data order and RNG
    resumed.load(tmp_path / "run.pt")
    assert resumed.opt.steps == k
    resumed.train_until(STEPS)

    assert torch.equal(torch.stack(unbroken.losses[k:]), torch.stack(resumed.losses))
    for (name, a), (_, b) in zip(unbroken.model.state_dict().items(),
                                 resumed.model.state_dict().items()):
        assert torch.equal(a, b), name  # parameters and BatchNorm statistics
    a_opt, b_opt = unbroken.opt, resumed.opt
    a_state, b_state = a_opt.state_dict()["state"], b_opt.state_dict()["state"]
    for i in a_state:
        ours = [k for k in a_state[i] if k.startswith("deo_")]
        assert ours == [k for k in b_state[i] if k.startswith("deo_")]  # N and ritz products
        for key in ours:
            assert torch.equal(a_state[i][key], b_state[i][key]), key
    assert torch.equal(a_opt.curvature, b_opt.curvature)
    assert a_opt.stats["extra_gradients"] == b_opt.stats["extra_gradients"] == 7
    assert a_opt.param_groups[0]["lr"] == b_opt.param_groups[0]["lr"]
    assert unbroken.scaler.get_scale() == resumed.scaler.get_scale()
    assert torch.equal(unbroken.rng, resumed.rng)  # the probes left the RNG alike
