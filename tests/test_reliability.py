"""Regression tests for defects found by using DEO as a new user would: each failed before
its fix. Ground truth where there is one: bit-identity with an untouched copy, exact
curvatures of closed-form problems, the true running statistics of BatchNorm."""

from __future__ import annotations

import copy
import io
import math
import pickle
import warnings

import pytest
import torch

import deo
from helpers import MLP, batch, make_closure, quadratic, quadratic_closure


def train(opt, model, steps, start=0):
    for step in range(start, start + steps):
        opt.step(make_closure(model, opt, step))


# -- torch.compile(model): the probe must not update BatchNorm statistics ---------------------

@pytest.mark.filterwarnings("ignore:Using `torch.compile\\(module\\)`:UserWarning")
def test_probe_restores_the_buffers_of_a_torch_compiled_module():
    # alpha = 0: DEO takes AdamW's steps, so the BatchNorm statistics must be AdamW's exactly
    torch.manual_seed(0)
    model = MLP(dropout=0.0)
    plain_model = copy.deepcopy(model)
    compiled = torch.compile(model, backend="eager")  # dynamo runs the submodules: no hooks
    plain_compiled = torch.compile(plain_model, backend="eager")
    opt = deo.DEO(model.parameters(), lr=1e-2, alpha=0.0, interval=1, rotation="ritz")
    plain = torch.optim.AdamW(plain_model.parameters(), lr=1e-2)
    for step in range(4):
        x, y = batch(step)
        for net, optimizer in ((compiled, opt), (plain_compiled, plain)):
            def closure(net=net, optimizer=optimizer, x=x, y=y):
                optimizer.zero_grad()
                loss = torch.nn.functional.mse_loss(net(x), y)
                loss.backward()
                return loss

            optimizer.step(closure)
    assert int(opt.stats["extra_gradients"]) == 4
    assert int(model.norm.num_batches_tracked) == 4  # 8 before: the probes counted too
    assert torch.equal(model.norm.running_mean, plain_model.norm.running_mean)
    assert torch.equal(model.norm.running_var, plain_model.norm.running_var)


# -- add_param_group with the Ritz rule ---------------------------------------------------------

def test_add_param_group_after_a_ritz_probe_keeps_training_and_turns_the_new_tensor():
    hessian, _ = quadratic(torch.tensor([-2.0, 0.5, 1.0, 3.0]))
    x = torch.nn.Parameter(torch.full((2,), 0.3, dtype=torch.float64))
    z = torch.nn.Parameter(torch.full((2,), 0.3, dtype=torch.float64))
    opt = deo.DEO([x], base=torch.optim.SGD, lr=0.0, alpha=0.0, interval=1, rotation="ritz",
                  displacement=1e-4, probes_per_update=3)

    def closure():
        opt.zero_grad()
        v = torch.cat([x, z])
        loss = 0.5 * v @ hessian @ v
        loss.backward()
        return loss

    opt.step(closure)
    opt.add_param_group({"params": [z]})
    for _ in range(15):  # raised KeyError: 'hvp' at the first probe after the new group
        opt.step(closure)
    n = torch.cat([d.reshape(-1) for d in opt.direction])
    assert float(n.norm()) == pytest.approx(1.0, rel=1e-9)
    assert float(opt.direction[1].norm()) > 0.1  # the new tensor's part of N was turned
    assert float(opt.curvature) == pytest.approx(-2.0, rel=1e-4)  # lambda_min of all four


# -- deepcopy, pickle, torch.save of the optimizer object --------------------------------------

@pytest.mark.parametrize("copier", ["deepcopy", "pickle", "torch.save"])
def test_a_copied_optimizer_trains_exactly_as_the_original(copier):
    torch.manual_seed(0)
    model = MLP(batchnorm=False, dropout=0.0)
    opt = deo.DEO(model.parameters(), lr=1e-2, interval=3, rotation="ritz")
    train(opt, model, 4)
    if copier == "deepcopy":
        model2, opt2 = copy.deepcopy((model, opt))
    elif copier == "pickle":
        model2, opt2 = pickle.loads(pickle.dumps((model, opt)))
    else:
        buffer = io.BytesIO()
        torch.save((model, opt), buffer)
        buffer.seek(0)
        model2, opt2 = torch.load(buffer, weights_only=False)
    assert opt2.param_groups is opt2.base.param_groups
    assert opt2.param_groups[0]["params"][0] is next(model2.parameters())
    train(opt, model, 5, start=4)
    train(opt2, model2, 5, start=4)  # raised AttributeError: no attribute 'steps'
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert opt2.steps == 9 and torch.equal(opt.curvature, opt2.curvature)


# -- one public probe schedule ------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, due", [
    ({"interval": 3}, [True, False, False, True, False, False, True]),
    ({"trigger": "spike"}, [True] * 7),
])
def test_probe_due_is_the_schedule_step_follows(kwargs, due):
    torch.manual_seed(0)
    model = MLP(batchnorm=False, dropout=0.0)
    opt = deo.DEO(model.parameters(), lr=1e-2, rotation="ritz", **kwargs)
    seen = []
    for step in range(7):
        seen.append(opt.probe_due())
        if not seen[-1]:  # a cheap step must run without a closure
            make_closure(model, opt, step)()
            opt.step()
        else:
            opt.step(make_closure(model, opt, step))
    assert seen == due


def test_probe_due_follows_the_angle_rule_and_the_missing_closure_error_names_it():
    torch.manual_seed(0)
    model = MLP(batchnorm=False, dropout=0.0)
    opt = deo.DEO(model.parameters(), lr=1e-2, interval=2, rotation="oja",
                  interval_rule="angle")
    probes = 0
    for step in range(12):
        before = int(opt.stats["extra_gradients"])
        if opt.probe_due():
            opt.step(make_closure(model, opt, step))
        else:
            make_closure(model, opt, step)()
            opt.step()
        probes += int(opt.stats["extra_gradients"]) - before
    assert probes == int(opt.stats["extra_gradients"]) >= 2
    while not opt.probe_due():
        make_closure(model, opt, 0)()
        opt.step()
    with pytest.raises(RuntimeError, match="interval_rule='angle'"):
        opt.step()


# -- a closure that yields no gradient on the probe's second call -------------------------------

def test_a_do_nothing_closure_on_a_probe_step_raises_and_names_the_fix():
    torch.manual_seed(0)
    model = MLP(batchnorm=False, dropout=0.0)
    opt = deo.DEO(model.parameters(), lr=1e-2, interval=2)
    make_closure(model, opt, 0)()  # the user's own backward, as in manual optimisation
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="no gradient at the displaced parameters"):
        opt.step(lambda: None)  # Lightning's do_nothing_closure
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert opt.steps == 0 and math.isnan(float(opt.curvature))


# -- base.load_state_dict, schedulers, add_param_group -----------------------------------------

def test_loading_the_base_state_keeps_schedulers_and_add_param_group_working():
    torch.manual_seed(0)
    model = MLP(batchnorm=False, dropout=0.0)
    plain = torch.optim.AdamW(model.parameters(), lr=1e-2)
    make_closure(model, plain, 0)()
    plain.step()
    opt = deo.DEO(model.parameters(), lr=1e-2, interval=2)
    opt.base.load_state_dict(plain.state_dict())  # warm start from a plain AdamW run
    assert opt.param_groups is opt.base.param_groups
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    train(opt, model, 2)
    scheduler.step()
    assert opt.base.param_groups[0]["lr"] == pytest.approx(5e-3)
    extra = torch.nn.Parameter(torch.zeros(3))
    opt.add_param_group({"params": [extra]})  # raised KeyError: 'direction' later
    assert len(opt.direction) == len(list(model.parameters())) + 1
    train(opt, model, 2, start=2)


# -- load_state_dict: settings, missing entries, atomicity --------------------------------------

def saved_run(**kwargs):
    torch.manual_seed(0)
    model = MLP(batchnorm=False, dropout=0.0)
    opt = deo.DEO(model.parameters(), lr=1e-2, **kwargs)
    train(opt, model, 4)
    return model, opt, opt.state_dict()


def fresh(model, **kwargs):
    return deo.DEO(model.parameters(), lr=1e-2, **kwargs)


def test_loading_a_checkpoint_saved_with_other_settings_raises_and_changes_nothing():
    model, _, sd = saved_run(interval=3, alpha=5.0)
    opt = fresh(model, interval=5, alpha=1.0)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=r"interval: saved 3.*alpha: saved 5.0|alpha: saved 5"):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    assert after["deo"]["steps"] == 0 and after["state"].keys() == before["state"].keys()
    assert all(torch.equal(a, b) for a, b in zip(
        [e["deo_direction"] for e in before["state"].values()],
        [e["deo_direction"] for e in after["state"].values()]))


def test_a_ritz_checkpoint_does_not_load_into_an_oja_deo():
    model, _, sd = saved_run(interval=2, rotation="ritz")
    with pytest.raises(ValueError, match="rotation: saved 'ritz'"):
        fresh(model, interval=2, rotation="oja").load_state_dict(sd)


@pytest.mark.parametrize("damage, match", [
    (lambda sd: sd["deo"].pop("steps"), r"lacks \['steps'\]"),
    (lambda sd: sd["state"][0].pop("deo_direction"), "no N .* for parameter 0"),
    (lambda sd: sd["state"][1].update(deo_direction=torch.zeros(3)), "shaped"),
    (lambda sd: sd["deo"].update(steps="four"), "malformed"),
    (lambda sd: sd["param_groups"][0]["params"].pop(), "size"),
])
def test_a_damaged_checkpoint_raises_before_loading_anything(damage, match):
    model, _, sd = saved_run(interval=3)
    damage(sd)
    opt = fresh(model, interval=3)
    base_before = copy.deepcopy(opt.base.state_dict())
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(sd)
    assert opt.steps == 0 and opt.base.state_dict()["state"] == base_before["state"]
    assert opt.param_groups is opt.base.param_groups


def test_the_seed_and_compile_step_do_not_block_a_resume_and_the_seed_is_restored():
    model, original, sd = saved_run(interval=3, seed=4)
    opt = fresh(model, interval=3, seed=99)
    opt.load_state_dict(sd)
    assert opt.seed == 4 and opt.steps == 4
    assert all(torch.equal(a, b) for a, b in zip(opt.direction, original.direction))


def test_base_state_dict_goes_back_to_the_plain_base_optimizer():
    model, opt, sd = saved_run(interval=3)
    plain = torch.optim.AdamW(model.parameters(), lr=1e-2)
    plain.load_state_dict(deo.base_state_dict(sd))
    assert not any(k.startswith("deo_") for entry in plain.state.values() for k in entry)
    for p in model.parameters():
        assert torch.equal(plain.state[p]["exp_avg"], opt.base.state[p]["exp_avg"])


# -- unsupported inputs: clear errors at construction -------------------------------------------

def test_unsupported_parameters_are_refused_at_construction():
    with pytest.raises(TypeError, match="params: parameter 0 is complex"):
        deo.DEO([torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))], lr=1e-3)
    p = torch.nn.Parameter(torch.randn(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch itself only warns of the duplicate
        with pytest.raises(ValueError, match="parameter 1 is parameter 0 again"):
            deo.DEO([p, p], lr=1e-3)
    with pytest.raises(ValueError, match="meta device"):
        deo.DEO([torch.nn.Parameter(torch.empty(3, device="meta"))], lr=1e-3)
    with pytest.raises(ValueError, match="every parameter is empty"):
        deo.DEO([torch.nn.Parameter(torch.empty(0))], lr=1e-3)


@pytest.mark.parametrize("base, match", [
    (torch.optim.LBFGS, "LBFGS cannot be DEO's base"),
    (torch.optim.SparseAdam, "SparseAdam cannot be DEO's base"),
])
def test_bases_that_cannot_work_are_refused(base, match):
    with pytest.raises(TypeError, match=match):
        deo.DEO([torch.nn.Parameter(torch.randn(3))], base=base, lr=1e-3)
    instance = base([torch.nn.Parameter(torch.randn(3))], lr=1e-3)
    with pytest.raises(TypeError, match=match):
        deo.DEO(None, base=instance)


@pytest.mark.parametrize("kwargs, match", [
    ({"seed": 2**63}, r"seed: expected an int in \[0, 2\*\*63\)"),
    ({"seed": -1}, r"seed: expected an int in \[0, 2\*\*63\)"),
    ({"alpha": 1e39}, r"alpha: .*\[-1000, 1000\]"),
    ({"rotation_lr": 1e20}, r"rotation_lr: .*<= 1e\+06"),
    ({"displacement": 1e300}, r"displacement: .*<= 1000"),
    ({"displacement": 1e-30}, r"displacement: 1e-30 is below the machine epsilon"),
    ({"escape_step": 1e30}, r"escape_step: .*<= 1e\+06"),
])
def test_absurd_finite_values_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        deo.DEO([torch.nn.Parameter(torch.randn(3))], lr=1e-3, **kwargs)


def test_the_displacement_floor_follows_the_parameters_dtype():
    double = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
    assert deo.DEO([double], lr=1e-3, displacement=1e-9).displacement == 1e-9
    with pytest.raises(ValueError, match="machine epsilon"):
        deo.DEO([torch.nn.Parameter(torch.randn(3))], lr=1e-3, displacement=1e-9)


def test_sparse_gradients_are_refused_at_the_first_step_before_any_change():
    embedding = torch.nn.Embedding(10, 4, sparse=True)
    opt = deo.DEO(embedding.parameters(), base=torch.optim.SGD, lr=0.1, interval=2)
    before = embedding.weight.detach().clone()

    def closure():
        opt.zero_grad()
        loss = embedding(torch.tensor([1, 2])).sum()
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="sparse gradient .* sparse=False"):
        opt.step(closure)
    assert torch.equal(embedding.weight, before) and opt.steps == 0


def test_an_empty_tensor_in_tensor_scope_does_not_set_the_curvature():
    hessian = torch.diag(torch.tensor([2.0, 3.0], dtype=torch.float64))
    x = torch.nn.Parameter(torch.tensor([0.5, -0.5], dtype=torch.float64))
    empty = torch.nn.Parameter(torch.empty(0, dtype=torch.float64))
    opt = deo.DEO([x, empty], base=torch.optim.SGD, lr=0.0, alpha=0.0, interval=1,
                  scope="tensor", rotation_lr=0.2, displacement=1e-4)
    for _ in range(40):
        opt.step(quadratic_closure(x, hessian))
    assert float(opt.curvature) == pytest.approx(2.0, rel=1e-3)  # 0.0 before: the empty N
    assert opt.direction[1].numel() == 0


# -- trigger="spike" with a closure that returns no loss ----------------------------------------

@pytest.mark.parametrize("returned, match", [(None, "got NoneType"),
                                             (torch.ones(3), r"a tensor of shape \(3,\)")])
def test_the_spike_trigger_names_what_the_closure_must_return(returned, match):
    torch.manual_seed(0)
    model = MLP(batchnorm=False, dropout=0.0)
    opt = deo.DEO(model.parameters(), lr=1e-2, trigger="spike")
    closure = make_closure(model, opt, 0)

    def bad():
        closure()
        return returned

    with pytest.raises(TypeError, match="trigger='spike' reads the loss .* " + match):
        opt.step(bad)


# -- counters when the closure raises in a checked escape trial ---------------------------------

def test_a_closure_that_raises_in_an_escape_trial_is_not_counted():
    hessian = torch.diag(torch.tensor([-2.0, 1.0], dtype=torch.float64))
    x = torch.nn.Parameter(torch.tensor([1e-3, 0.5], dtype=torch.float64))
    opt = deo.DEO([x], base=torch.optim.SGD, lr=0.0, alpha=0.0, interval=1, rotation="ritz",
                  displacement=1e-3, probes_per_update=2, escape_step=0.25,
                  escape_rule="checked")
    opt.step(quadratic_closure(x, hessian))  # turns N onto the negative direction
    counts = int(opt.stats["extra_gradients"]), int(opt.stats["escape_trials"])
    assert counts[1] == 1
    start = x.detach().clone()

    def interrupted_trial():
        # the rotation's evaluations lie dR = 1e-3 from the start, the trial 0.5 away
        if float((x.detach() - start).norm()) > 0.01:
            raise KeyboardInterrupt
        return quadratic_closure(x, hessian)()

    with pytest.raises(KeyboardInterrupt):
        opt.step(interrupted_trial)
    assert int(opt.stats["escape_trials"]) == counts[1]  # was counted before the evaluation
    assert int(opt.stats["extra_gradients"]) == counts[0] + 1  # the rotation's one evaluation


# -- a closure that evaluates another batch on its second call ----------------------------------

def test_a_closure_that_prefetches_the_next_batch_is_detected_and_skipped():
    torch.manual_seed(0)
    model = MLP(batchnorm=False, dropout=0.0)
    opt = deo.DEO(model.parameters(), lr=1e-3, interval=2, rotation="ritz")  # dR = 1e-2
    draws = iter(range(10_000))

    def prefetching_closure():  # nanoGPT's loop moved into a closure: X, Y = get_batch()
        x, y = batch(next(draws))
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    with pytest.warns(RuntimeWarning, match="another batch") as record:
        for _ in range(10):
            opt.step(prefetching_closure)
    assert len([w for w in record if "another batch" in str(w.message)]) == 1  # warned once
    assert int(opt.stats["inconsistent_probes"]) == 5  # every probe step: 0, 2, 4, 6, 8
    assert math.isnan(float(opt.curvature))  # never rotated on mixed batches


def test_a_consistent_closure_is_never_flagged_on_a_quadratic_or_the_mlp():
    hessian, _ = quadratic(torch.linspace(-3.0, 5.0, 8))
    x = torch.nn.Parameter(torch.randn(8, dtype=torch.float64))
    opt = deo.DEO([x], base=torch.optim.SGD, lr=1e-2, interval=1, rotation="ritz",
                  displacement=0.5)  # a long dimer: the trapezoid rule is exact on quadratics
    for _ in range(20):
        opt.step(quadratic_closure(x, hessian))
    torch.manual_seed(0)
    model = MLP(dropout=0.3)
    mlp_opt = deo.DEO(model.parameters(), lr=1e-2, interval=1, rotation="ritz")
    train(mlp_opt, model, 20)
    assert int(opt.stats["inconsistent_probes"]) == int(mlp_opt.stats["inconsistent_probes"]) == 0


# -- state-dict hooks ---------------------------------------------------------------------------

def test_state_dict_hooks_fire_as_on_a_plain_optimizer():
    torch.manual_seed(0)
    model = MLP(batchnorm=False, dropout=0.0)
    opt = deo.DEO(model.parameters(), lr=1e-2, interval=2)
    train(opt, model, 3)
    fired = []
    opt.register_state_dict_pre_hook(lambda o: fired.append("save-pre"))
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "tag": fired.append("save-post")})
    opt.register_load_state_dict_pre_hook(
        lambda o, sd: fired.append("load-pre") or {k: v for k, v in sd.items() if k != "tag"})
    opt.register_load_state_dict_post_hook(lambda o: fired.append("load-post"))
    sd = opt.state_dict()
    assert "tag" in sd and "deo" in sd  # the post hook's result is what state_dict returns
    opt.load_state_dict(sd)  # the pre hook's result is what loads
    assert fired == ["save-pre", "save-post", "load-pre", "load-post"]


def test_a_checkpoint_in_the_first_release_layout_loads_as_todays():
    """deo 0.1.0 wrote the counters, the rule's scalars and the policies' state under other
    keys; such a checkpoint resumes exactly as one written now."""
    settings = {"rotation": "ritz", "interval": 2, "interval_rule": "angle",
                "escape_step": 0.5, "escape_rule": "checked"}
    model, opt, sd = saved_run(**settings)
    state = opt.deo_state
    old = copy.deepcopy(sd)
    old["deo"] = {"steps": state.steps, "probe_count": state.extra_gradients,
                  "skipped_probes": state.skipped_probes,
                  "inconsistent_probes": state.inconsistent_probes,
                  "stats": sd["deo"]["stats"], "rule_scalars": sd["deo"]["rule"],
                  "policies": {"next_probe": state.schedule.next_probe,
                               "probe_gap": state.schedule.probe_gap,
                               "spikes": sd["deo"]["spikes"],
                               "escape": {"radius": state.escape.radius, "kept": state.escapes,
                                          "tried": state.escape_trials}},
                  "settings": sd["deo"]["settings"]}
    from_old, from_new = fresh(model, **settings), fresh(model, **settings)
    from_old.load_state_dict(old)
    from_new.load_state_dict(sd)
    assert repr(from_old.deo_state) == repr(from_new.deo_state)
    assert from_old.deo_state.schedule.next_probe == state.schedule.next_probe > 0
