"""DEO in Hugging Face transformers.Trainer through deo.integrations.transformers.DEOTrainer."""

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from deo.integrations.transformers import DEOTrainer  # noqa: E402


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n=64, length=12):
        self.ids = torch.randint(0, 50, (n, length), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_gpt2():
    torch.manual_seed(0)  # randomly initialised, dropout 0.1 as GPT-2's default
    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2,
                                     n_head=2, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


def arguments(out, steps, accumulation=1, **kwargs):
    return transformers.TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=4,
        gradient_accumulation_steps=accumulation, learning_rate=1e-3, warmup_steps=3,
        lr_scheduler_type="cosine", report_to="none", logging_strategy="no",
        use_cpu=True, disable_tqdm=True, seed=0, **{"save_strategy": "no", **kwargs})


def train(out, steps, trainer_cls=DEOTrainer, accumulation=1, resume=None, deo=None,
          **kwargs):
    model = tiny_gpt2()
    extra = {"deo_kwargs": deo or {}} if trainer_cls is DEOTrainer else {}
    trainer = trainer_cls(model=model, args=arguments(out, steps, accumulation, **kwargs),
                          train_dataset=Tokens(), **extra)
    result = trainer.train(resume_from_checkpoint=resume)
    return trainer, model, result


def test_deo_trainer_probes_and_resumes_from_a_trainer_checkpoint(tmp_path):
    settings = {"interval": 5, "displacement": 1e-2, "rotation": "ritz"}
    first, _, _ = train(tmp_path, 7, deo=settings, save_strategy="steps", save_steps=7)
    assert first.deo.steps == 7 and int(first.deo.stats["extra_gradients"]) == 2  # 0, 5
    assert first.deo.max_grad_norm == 1.0  # TrainingArguments' default, moved into DEO

    # a different N seed: N, the step counter and the probe counters come from optimizer.pt
    resumed, _, result = train(tmp_path, 12, deo={**settings, "seed": 99},
                               resume=str(tmp_path / "checkpoint-7"))
    deo = resumed.deo
    assert deo.steps == 12 and int(deo.stats["extra_gradients"]) == 3  # 0, 5, 10
    assert int(deo.stats["skipped_probes"]) == 0
    assert math.isfinite(result.training_loss) and torch.isfinite(deo.curvature)


def test_alpha_zero_is_the_plain_trainer_bit_for_bit(tmp_path):
    # dropout on, 2 micro-batches per step, clipping at 1.0, warm-up and cosine: the probe
    # must leave no trace (gradients, parameters, RNG) and clipping must stay equivalent
    _, plain, _ = train(tmp_path / "plain", 7, transformers.Trainer, accumulation=2)
    trainer, model, _ = train(tmp_path / "deo", 7, accumulation=2,
                              deo={"alpha": 0.0, "interval": 5})
    assert int(trainer.deo.stats["extra_gradients"]) == 2
    for (name, a), (_, b) in zip(plain.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), name


def test_probe_replays_every_micro_batch_with_its_dropout_masks(tmp_path):
    masks = []  # (DEO step, replay?, embedding dropout mask)
    trainer_box = []

    def record(module, inputs, output):
        trainer = trainer_box[0]
        masks.append((trainer.deo.steps, trainer._deo_replaying, output != 0))

    model = tiny_gpt2()
    model.transformer.drop.register_forward_hook(record)
    trainer = DEOTrainer(model=model, args=arguments(tmp_path, 6, accumulation=2),
                         train_dataset=Tokens(), deo_kwargs={"interval": 5})
    trainer_box.append(trainer)
    trainer.train()

    assert int(trainer.deo.stats["extra_gradients"]) == 2
    for step in (0, 5):
        main = [m for s, replay, m in masks if s == step and not replay]
        replay = [m for s, replay, m in masks if s == step and replay]
        assert len(main) == len(replay) == 2
        for a, b in zip(main, replay):
            assert torch.equal(a, b)
    assert not torch.equal(masks[0][2], masks[1][2])  # two micro-batches, two masks
    assert sum(replay for _, replay, _ in masks) == 4  # cheap steps replay nothing


def test_clipping_moves_into_deo_and_a_ready_deo_is_refused(tmp_path):
    import deo

    model = tiny_gpt2()
    args = arguments(tmp_path, 1)
    trainer = DEOTrainer(model=model, args=args, train_dataset=Tokens())
    # the Trainer would clip g but not g': DEO clips instead, after the correction
    assert trainer.deo_kwargs["max_grad_norm"] == args.max_grad_norm == 1.0
    assert trainer.args.max_grad_norm == 0.0  # a copy: the caller's arguments are untouched

    opt = deo.DEO(model.parameters(), lr=1e-3)
    trainer = DEOTrainer(model=model, args=args, train_dataset=Tokens(), optimizers=(opt, None))
    with pytest.raises(TypeError, match="deo_kwargs"):
        trainer.create_optimizer()


POLICIES = [{"alpha_rule": "curvature"}, {"interval_rule": "angle"}, {"trigger": "spike"},
            {"escape_step": 0.1}, {"escape_step": 0.1, "escape_rule": "checked"}]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: ",".join(f"{k}={v}"
                                                                    for k, v in p.items()))
def test_every_policy_trains_through_deo_trainer(tmp_path, policy):
    # interval_rule="angle" and trigger="spike" crashed at step 1: the trainer recorded the
    # batches on its own copy of the fixed schedule, not on DEO.probe_due()
    trainer, _, result = train(tmp_path, 6, accumulation=2,
                               deo={"interval": 2, "rotation": "ritz", **policy})
    deo = trainer.deo
    assert deo.steps == 6 and math.isfinite(result.training_loss)
    assert int(deo.stats["skipped_probes"]) == int(deo.stats["inconsistent_probes"]) == 0
    if policy.get("trigger") == "spike":  # it saw the loss of every step, from the Trainer
        assert deo.deo_state.spikes.seen == 6
    else:
        assert int(deo.stats["extra_gradients"]) >= 2 and torch.isfinite(deo.curvature)
