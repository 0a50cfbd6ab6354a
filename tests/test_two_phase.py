"""The passes in the training loop (begin_step, first_step, second_step) against
step(closure): bit for bit on a net with dropout and BatchNorm, with accumulation outside a
closure, and with a GradScaler that the loop drives itself (scaler.step(opt))."""

import math

import pytest
import torch

import deo
from helpers import MLP, batch

SETTINGS = {
    "oja": {"interval": 2},
    "ritz": {"rotation": "ritz", "interval": 2},
    # two displaced passes per probe step: the loop runs as many as DEO asks for
    "ritz-budget-2": {"rotation": "ritz", "interval": 3, "probes_per_update": 2},
    # the recommended configuration: a rotation pass, then the escape trial's pass
    "recommended": {**deo.recommended("saddle"), "displacement": 1e-2, "escape_step": 4.0},
    "tensor-scope": {"scope": "tensor", "interval": 2, "rotation_lr": 0.1},
    "angle-rule": {"rotation": "ritz", "interval_rule": "angle", "interval": 2},
    "spike-trigger": {"trigger": "spike", "interval": 2},
}
STEPS = 12
SURGE = 10  # the targets jump tenfold on this step: the spike trigger fires (after its warm-up)


def build(settings, seed=0):
    torch.manual_seed(seed)
    model = MLP(dropout=0.3, batchnorm=True)
    kwargs = {"lr": 1e-2, "displacement": 1e-2, **settings}
    opt = deo.DEO(model.parameters(), base=torch.optim.AdamW, **kwargs)
    return model, opt


def micro_batches(step, count):
    x, y = batch(step)
    y = 10 * y if step == SURGE else y
    size = len(x) // count
    return [(x[i * size:(i + 1) * size], y[i * size:(i + 1) * size]) for i in range(count)]


def forward_backward(model, batches, scaler=None, poison=False):
    """The main or a displaced pass over this step's micro-batches (mean of their losses)."""
    total = 0.0
    for x, y in batches:
        loss = torch.nn.functional.mse_loss(model(x), y) / len(batches)
        if poison:
            loss = loss * math.inf
        (loss if scaler is None else scaler.scale(loss)).backward()
        total = total + loss.detach()
    return total


def train_with_closure(settings, accumulate=1, scaler=None):
    model, opt = build(settings)
    for step in range(STEPS):
        batches = micro_batches(step, accumulate)

        def closure(batches=batches):
            opt.zero_grad()
            return forward_backward(model, batches, scaler)

        opt.step(closure, grad_scaler=scaler)
    return model, opt


def train_with_passes(settings, accumulate=1, scaler=None, clip=None):
    model, opt = build(settings)
    for step in range(STEPS):
        batches = micro_batches(step, accumulate)  # drawn before any pass
        opt.zero_grad()
        opt.begin_step()
        loss = forward_backward(model, batches, scaler)
        while opt.first_step(loss, grad_scaler=scaler):
            opt.second_step(forward_backward(model, batches, scaler))
        if scaler is None:
            opt.step()
            continue
        if clip is not None:  # nanoGPT's order: unscale, clip, scaler.step
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        scaler.step(opt)
        scaler.update()
    return model, opt


def assert_identical(a, b):
    (model_a, opt_a), (model_b, opt_b) = a, b
    for (name, x), (_, y) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert torch.equal(x, y), name  # parameters and BatchNorm statistics
    for x, y in zip(opt_a.direction, opt_b.direction):
        assert torch.equal(x, y)
    for key, value in opt_a.stats.items():
        other = opt_b.stats[key]
        assert torch.equal(value, other) or (value.isnan() and other.isnan()), key
    assert opt_a.steps == opt_b.steps == STEPS


@pytest.mark.parametrize("name", SETTINGS)
def test_the_passes_in_the_loop_match_step_with_a_closure_bit_for_bit(name):
    closure_run = train_with_closure(SETTINGS[name])
    passes_run = train_with_passes(SETTINGS[name])
    assert_identical(closure_run, passes_run)
    opt = passes_run[1]
    assert int(opt.stats["extra_gradients"]) > 0
    assert int(opt.stats["inconsistent_probes"]) == 0  # the same batch and dropout masks
    if name == "recommended":
        assert int(opt.stats["escape_trials"]) > 0  # the trial's pass ran in the loop too


def test_accumulation_outside_a_closure_matches_accumulation_inside_one():
    settings = SETTINGS["ritz"]
    assert_identical(train_with_closure(settings, accumulate=4),
                     train_with_passes(settings, accumulate=4))


@pytest.mark.parametrize("clip", [None, 1e9])
def test_a_grad_scaler_driven_by_the_loop_matches_step_with_grad_scaler(clip):
    """The loop unscales later (scaler.step, or unscale_ before clipping): DEO takes the scale
    off the main gradient itself; a clip that never bites leaves the results bit-identical."""
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=4)
               for _ in range(2)]
    closure_run = train_with_closure(SETTINGS["ritz"], scaler=scalers[0])
    passes_run = train_with_passes(SETTINGS["ritz"], scaler=scalers[1], clip=clip)
    assert_identical(closure_run, passes_run)
    assert scalers[0].get_scale() == scalers[1].get_scale() == 2.0**13  # grew, no overflow


def test_an_overflow_in_the_displaced_pass_skips_the_step_and_backs_off_the_scaler():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    model, opt = build(SETTINGS["oja"])
    before = [p.detach().clone() for p in model.parameters()]
    batches = micro_batches(0, 1)
    opt.begin_step()
    loss = forward_backward(model, batches, scaler)
    assert opt.first_step(loss, grad_scaler=scaler)
    opt.second_step(forward_backward(model, batches, scaler, poison=True))
    assert not opt.first_step(loss, grad_scaler=scaler)
    scaler.step(opt)
    scaler.update()
    assert opt.steps == 0 and int(opt.stats["skipped_probes"]) == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert scaler.get_scale() == 2.0**9


def test_misuse_raises_a_clear_error_and_leaves_the_parameters_intact():
    model, opt = build(SETTINGS["oja"])
    before = [p.detach().clone() for p in model.parameters()]
    batches = micro_batches(0, 1)
    loss = forward_backward(model, batches)
    with pytest.raises(RuntimeError, match="begin_step"):
        opt.first_step(loss)
    with pytest.raises(RuntimeError, match="needs a closure"):
        opt.step()  # a probe step whose passes were not run
    opt.begin_step()
    assert opt.first_step(loss)  # the parameters are displaced now
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(RuntimeError, match="already displaced"):
        opt.first_step(loss)  # twice without the pass between
    with pytest.raises(RuntimeError, match="second_step"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(RuntimeError, match="no displaced pass"):
        opt.second_step()
    opt.zero_grad()
    opt.begin_step()
    loss = forward_backward(model, batches)
    assert opt.first_step(loss)
    opt.second_step(forward_backward(model, batches))
    with pytest.raises(RuntimeError, match="no displaced pass"):
        opt.second_step()  # twice: the parameters are back at theta
    assert not opt.first_step(loss)
    opt.step()
    assert opt.steps == 1


def test_a_displaced_pass_that_raises_is_undone_by_the_next_begin_step():
    model, opt = build(SETTINGS["oja"])
    before = [p.detach().clone() for p in model.parameters()]
    batches = micro_batches(0, 1)
    opt.begin_step()
    loss = forward_backward(model, batches)
    grads = [p.grad.clone() for p in model.parameters()]
    assert opt.first_step(loss)
    # the displaced pass breaks off here (say, out of memory): the loop retries the step
    opt.begin_step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
