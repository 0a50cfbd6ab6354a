"""DEO under PyTorch Lightning: automatic optimization as is, checkpoints, DEOCallback."""

import pytest
import torch

L = pytest.importorskip("lightning")

import deo  # noqa: E402
from deo.integrations.lightning import DEOCallback  # noqa: E402
from helpers import batch  # noqa: E402

# Lightning 2.6's own use of torch.utils._pytree.LeafSpec warns under torch 2.13
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")


class Regression(L.LightningModule):
    """A tiny net; its batches depend on the global step only, not on Lightning's epochs."""

    def __init__(self, seed=0, dropout=0.3, micro_batches=None):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(),
                                       torch.nn.Dropout(dropout), torch.nn.Linear(16, 1))
        self.seed = seed
        self.micro_batches = micro_batches  # set: manual optimization, accumulate in closure
        self.automatic_optimization = micro_batches is None

    def loss(self, x, y):
        return torch.nn.functional.mse_loss(self.net(x), y)

    def training_step(self, _, batch_idx):
        x, y = batch(self.global_step)
        if self.automatic_optimization:
            return self.loss(x, y)
        opt = self.optimizers()
        micro = list(zip(x.chunk(self.micro_batches), y.chunk(self.micro_batches)))

        def closure():  # the README's accumulation pattern
            opt.zero_grad()
            total = 0.0
            for xi, yi in micro:
                loss = self.loss(xi, yi) / len(micro)
                self.manual_backward(loss)
                total += loss.detach()
            return total

        opt.step(closure=closure)
        self.lr_schedulers().step()

    def configure_optimizers(self):
        opt = deo.DEO(self.parameters(), base=torch.optim.AdamW, lr=1e-2, interval=10,
                      rotation_lr=0.05, seed=self.seed)
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # Lightning does not checkpoint the RNG; dropout masks continue only if the module does
    def on_save_checkpoint(self, checkpoint):
        checkpoint["torch_rng_state"] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint):
        torch.set_rng_state(checkpoint["torch_rng_state"])


def loader():  # one dummy sample: training_step draws its own batch from the step
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(1)))


def fit(module, steps, root, ckpt_path=None, **trainer_kwargs):
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=root,
                        callbacks=[DEOCallback()], **trainer_kwargs)
    trainer.fit(module, loader(), ckpt_path=ckpt_path)
    return trainer, trainer.optimizers[0]


def test_automatic_optimization_and_resume_continue_deo_bit_identically(tmp_path):
    torch.manual_seed(0)
    full = Regression()
    _, full_opt = fit(full, 35, tmp_path)
    assert isinstance(full_opt, deo.DEO)
    assert full_opt.steps == 35 and int(full_opt.stats["extra_gradients"]) == 4  # 0, 10, 20, 30

    torch.manual_seed(0)
    first = Regression()
    trainer, first_opt = fit(first, 25, tmp_path)
    assert first_opt.steps == 25 and int(first_opt.stats["extra_gradients"]) == 3
    trainer.save_checkpoint(tmp_path / "step25.ckpt")

    torch.manual_seed(5)
    resumed = Regression(seed=99)  # other weights, other N: all must come from the checkpoint
    _, opt = fit(resumed, 35, tmp_path, ckpt_path=tmp_path / "step25.ckpt")
    assert opt.steps == 35 and int(opt.stats["extra_gradients"]) == 4
    assert opt.param_groups is opt.base.param_groups
    assert opt.param_groups[0]["lr"] == full_opt.param_groups[0]["lr"] == 1e-2 * 0.5**5
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(full_opt.direction, opt.direction):
        assert torch.equal(a, b)
    assert torch.equal(full_opt.curvature, opt.curvature)


def test_bf16_mixed_precision_probes_on_float32_weights(tmp_path):
    torch.manual_seed(0)
    module = Regression()
    _, opt = fit(module, 12, tmp_path, precision="bf16-mixed")
    assert int(opt.stats["extra_gradients"]) == 2 and int(opt.stats["skipped_probes"]) == 0
    assert torch.isfinite(opt.curvature)
    assert all(p.dtype == torch.float32 for p in module.parameters())


def test_manual_optimization_accumulating_in_one_closure_equals_one_batch(tmp_path):
    torch.manual_seed(0)
    whole = Regression(dropout=0.0)
    _, whole_opt = fit(whole, 12, tmp_path)
    torch.manual_seed(0)
    accumulated = Regression(dropout=0.0, micro_batches=4)
    _, opt = fit(accumulated, 12, tmp_path)
    assert opt.steps == 12 and int(opt.stats["extra_gradients"]) == 2
    torch.testing.assert_close(opt.curvature, whole_opt.curvature, rtol=1e-4, atol=1e-6)
    for a, b in zip(whole.parameters(), accumulated.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("setting, match", [
    ({"accumulate_grad_batches": 2}, "accumulate_grad_batches=2"),
    ({"gradient_clip_val": 1.0}, "max_grad_norm"),
])
def test_deo_callback_refuses_settings_that_corrupt_the_probe(tmp_path, setting, match):
    with pytest.raises(ValueError, match=match):
        fit(Regression(), 2, tmp_path, **setting)


POLICIES = [{"alpha_rule": "curvature"}, {"interval_rule": "angle"}, {"trigger": "spike"},
            {"escape_step": 0.1}, {"escape_step": 0.1, "escape_rule": "checked"}]


class PolicyRegression(Regression):
    def __init__(self, policy):
        super().__init__()
        self.policy = policy

    def configure_optimizers(self):
        return deo.DEO(self.parameters(), base=torch.optim.AdamW, lr=1e-2, interval=3,
                       rotation="ritz", **self.policy)


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: ",".join(f"{k}={v}"
                                                                    for k, v in p.items()))
def test_every_policy_trains_under_lightning(tmp_path, policy):
    torch.manual_seed(0)
    _, opt = fit(PolicyRegression(policy), 12, tmp_path)
    assert opt.steps == 12
    assert int(opt.stats["skipped_probes"]) == int(opt.stats["inconsistent_probes"]) == 0
    if policy.get("trigger") == "spike":  # it probes only after a jump, but reads every loss
        assert opt.deo_state.spikes.seen == 12
    else:
        assert int(opt.stats["extra_gradients"]) >= 2 and torch.isfinite(opt.curvature)
    assert all(torch.isfinite(p).all() for p in opt.direction)


class NoClosure(Regression):
    """Manual optimisation that steps without a closure: Lightning passes a do-nothing one."""

    def __init__(self):
        super().__init__(micro_batches=1)

    def training_step(self, _, batch_idx):
        x, y = batch(self.global_step)
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(self.loss(x, y))
        opt.step()


def test_manual_optimization_without_a_closure_raises_at_the_probe(tmp_path):
    # before: the do-nothing closure's missing gradient was measured as curvature (-3.61)
    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="no gradient at the displaced parameters"):
        fit(NoClosure(), 3, tmp_path)
