"""alpha=0 must be the base optimizer, bit for bit; a resumed run must equal an unbroken one."""

import io

import pytest
import torch

import deo
from helpers import MLP, batch, make_closure

BASES = {
    "adamw": (torch.optim.AdamW, {"lr": 1e-2, "betas": (0.9, 0.99), "weight_decay": 0.1}),
    "sgd_momentum": (torch.optim.SGD, {"lr": 1e-2, "momentum": 0.9, "nesterov": True}),
    "adam": (torch.optim.Adam, {"lr": 1e-2, "weight_decay": 0.1}),
}


def train(model, opt, steps, start=0):
    for step in range(start, start + steps):
        opt.step(make_closure(model, opt, step))


def fresh_model(seed=0):
    torch.manual_seed(seed)
    return MLP(dropout=0.3, batchnorm=True)


def assert_same_model(a, b):
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("name", BASES)
def test_alpha_zero_is_bit_identical_to_the_base(name):
    base_cls, kwargs = BASES[name]
    reference = fresh_model()
    torch.manual_seed(123)
    train(reference, base_cls(reference.parameters(), **kwargs), 50)

    model = fresh_model()
    opt = deo.DEO(model.parameters(), base=base_cls, alpha=0.0, interval=10, **kwargs)
    torch.manual_seed(123)  # same dropout masks as the reference, IF the probe hides its RNG use
    train(model, opt, 50)
    assert int(opt.stats["extra_gradients"]) == 5
    assert torch.isfinite(opt.curvature)
    assert_same_model(reference, model)  # includes BatchNorm running statistics


def test_probe_leaves_batchnorm_statistics_as_the_main_pass_left_them():
    model = fresh_model()
    opt = deo.DEO(model.parameters(), base=torch.optim.SGD, lr=0.0, alpha=0.0,
                  displacement=1e-2)
    closure = make_closure(model, opt, 0)
    twin = fresh_model()
    twin.train()
    twin(batch(0)[0])  # one forward: what one main pass does
    opt.step(closure)
    assert int(model.norm.num_batches_tracked) == 1
    torch.testing.assert_close(model.norm.running_mean, twin.norm.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(model.norm.running_var, twin.norm.running_var, rtol=0, atol=0)


def save(model, opt, scheduler):
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()}, buffer)
    buffer.seek(0)
    return buffer


def build(seed_n, model_seed=0):
    model = fresh_model(model_seed)
    opt = deo.DEO(model.parameters(), base=torch.optim.AdamW, lr=1e-2, interval=10,
                  rotation_lr=0.05, seed=seed_n)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.7)
    return model, opt, scheduler


def train_scheduled(model, opt, scheduler, steps, start=0):
    for step in range(start, start + steps):
        opt.step(make_closure(model, opt, step))
        scheduler.step()


def test_resume_from_step_15_is_bit_identical():
    model, opt, scheduler = build(seed_n=0)
    torch.manual_seed(7)
    train_scheduled(model, opt, scheduler, 30)

    first, first_opt, first_sched = build(seed_n=0)
    torch.manual_seed(7)
    train_scheduled(first, first_opt, first_sched, 15)
    checkpoint = torch.load(save(first, first_opt, first_sched), weights_only=False)

    # a different N seed and model init: everything must come from the checkpoint
    resumed, resumed_opt, resumed_sched = build(seed_n=99, model_seed=5)
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt.load_state_dict(checkpoint["opt"])
    resumed_sched.load_state_dict(checkpoint["scheduler"])
    torch.set_rng_state(checkpoint["rng"])
    assert resumed_opt.steps == 15
    train_scheduled(resumed, resumed_opt, resumed_sched, 15, start=15)

    assert_same_model(model, resumed)
    for a, b in zip(opt.direction, resumed_opt.direction):
        assert torch.equal(a, b)
    assert torch.equal(opt.curvature, resumed_opt.curvature)
    assert opt.stats["extra_gradients"] == resumed_opt.stats["extra_gradients"] == 3
    assert opt.param_groups[0]["lr"] == resumed_opt.base.param_groups[0]["lr"]


def test_state_dict_carries_n_and_base_state_and_keeps_groups_shared():
    model, opt, scheduler = build(seed_n=0)
    train_scheduled(model, opt, scheduler, 3)
    sd = opt.state_dict()
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq", "deo_direction"}
    assert sd["deo"]["steps"] == 3
    assert "deo_direction" not in opt.base.state[next(model.parameters())]  # not leaked

    opt.load_state_dict(sd)
    assert opt.param_groups is opt.base.param_groups
    scheduler.step()  # a scheduler writes into the (new) shared groups
    assert opt.base.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_scheduler_lr_reaches_the_base_optimizer():
    model, opt, scheduler = build(seed_n=0)
    train_scheduled(model, opt, scheduler, 8)  # StepLR: two decays by 0.7
    assert opt.base.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.7**2)


def test_load_rejects_a_plain_optimizer_state_and_a_scope_mismatch():
    model, opt, _ = build(seed_n=0)
    with pytest.raises(ValueError, match="not a DEO state dict"):
        opt.load_state_dict(torch.optim.AdamW(model.parameters()).state_dict())
    tensor_scope = deo.DEO(model.parameters(), lr=1e-2, scope="tensor")
    with pytest.raises(ValueError, match="scope"):
        tensor_scope.load_state_dict(opt.state_dict())
