"""deo.bench.models: nanoGPT's GPT (both attention paths) and the character LSTM."""

from __future__ import annotations

import math

import pytest
import torch

from deo.bench.models import (
    GPT,
    CharLSTM,
    GPTConfig,
    LSTMConfig,
    gpt_config,
    math_attention,
    set_attention,
)

VOCAB = 65  # tiny Shakespeare


def tiny_config(**overrides) -> GPTConfig:
    return GPTConfig(
        **{**dict(block_size=16, vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32), **overrides}
    )


def tokens(batch: int, length: int, seed: int = 0, vocab: int = VOCAB) -> torch.Tensor:
    return torch.randint(vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "preset, paper_count, all_params",
    # nanoGPT prints num_parameters(non_embedding=True): all tensors, the tied wte/lm_head once,
    # without the position embedding (block 64 x width). That is the paper's 0.80M / 10.65M.
    [("small", 0.80e6, 804_096), ("complex", 10.65e6, 10_671_360)],
)
def test_preset_parameter_counts_match_paper(preset, paper_count, all_params):
    model = GPT(gpt_config(preset, VOCAB))
    cfg = model.config
    assert (cfg.block_size, cfg.dropout, cfg.bias) == (64, 0.0, False)
    n = model.num_parameters()
    assert abs(n - paper_count) / paper_count < 0.01
    assert abs(n - paper_count) < 0.005e6  # rounds to the published figure
    # closed form for bias-free nanoGPT: 12 d^2 + 2 d per block, V d tied, T d positions, d ln_f
    d = cfg.n_embd
    expected_all = cfg.n_layer * (12 * d * d + 2 * d) + VOCAB * d + 64 * d + d
    assert model.num_parameters(non_embedding=False) == expected_all == all_params
    assert n == expected_all - 64 * d


def test_lm_head_is_tied_to_token_embedding():
    model = GPT(tiny_config())
    assert model.lm_head.weight is model.transformer.wte.weight
    # counted once: the distinct tensors of the state dict (which lists the tied one twice)
    state = model.state_dict()
    distinct = {t.data_ptr(): t.numel() for t in state.values()}
    assert len(distinct) == len(state) - 1
    assert model.num_parameters(non_embedding=False) == sum(distinct.values())


def test_residual_projections_have_scaled_init():
    torch.manual_seed(0)
    model = GPT(gpt_config("small", VOCAB))
    scaled = 0.02 / math.sqrt(2 * 4)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert p.std().item() == pytest.approx(scaled, rel=0.05), name
        elif name.endswith("c_fc.weight") or name.endswith("c_attn.weight"):
            assert p.std().item() == pytest.approx(0.02, rel=0.05), name


def test_untrained_gpt_loss_is_uniform_guess():
    torch.manual_seed(0)
    model = GPT(gpt_config("small", VOCAB))
    idx = tokens(4, 64, seed=1)
    logits, loss = model(idx, tokens(4, 64, seed=2))
    assert logits.shape == (4, 64, VOCAB)
    assert abs(loss.item() - math.log(VOCAB)) < 0.1
    _, no_loss = model(idx)
    assert no_loss is None


def test_sdpa_and_math_attention_agree_on_logits_and_gradients():
    torch.manual_seed(0)
    model = GPT(tiny_config())
    idx, targets = tokens(3, 16, seed=1), tokens(3, 16, seed=2)
    results = {}
    for kind in ("sdpa", "math"):
        set_attention(model, kind)
        model.zero_grad()
        logits, loss = model(idx, targets)
        loss.backward()
        results[kind] = (logits.detach(), [p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(results["sdpa"][0], results["math"][0], atol=1e-5, rtol=1e-5)
    for g_sdpa, g_math in zip(results["sdpa"][1], results["math"][1]):
        torch.testing.assert_close(g_sdpa, g_math, atol=1e-5, rtol=1e-5)
    assert any(g.abs().max() > 0 for g in results["math"][1][1:])


@pytest.mark.parametrize("kind", ["sdpa", "math"])
def test_later_tokens_do_not_change_earlier_logits(kind):
    torch.manual_seed(0)
    model = GPT(tiny_config(attention=kind))
    idx = tokens(2, 16, seed=3)
    changed = idx.clone()
    changed[:, 10] = (changed[:, 10] + 1) % VOCAB
    before, _ = model(idx)
    after, _ = model(changed)
    torch.testing.assert_close(before[:, :10], after[:, :10], atol=0, rtol=0)
    assert (before[:, 10:] - after[:, 10:]).abs().amax(dim=-1).min() > 0


def test_exact_hessian_vector_product_with_math_attention():
    torch.manual_seed(0)
    model = GPT(tiny_config(attention="math")).double()
    params = list(model.parameters())
    idx, targets = tokens(2, 16, seed=4), tokens(2, 16, seed=5)
    gen = torch.Generator().manual_seed(6)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    v_norm = torch.cat([vi.flatten() for vi in v]).norm()
    v = [vi / v_norm for vi in v]  # unit step so eps sets the difference's truncation error

    def grads() -> list[torch.Tensor]:
        return list(torch.autograd.grad(model(idx, targets)[1], params))

    _, loss = model(idx, targets)
    g = torch.autograd.grad(loss, params, create_graph=True)
    hv = torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, v)), params)
    assert all(torch.isfinite(h).all() for h in hv)
    # ground truth: central difference of the gradient along v (float64, error O(eps^2))
    eps = 1e-4
    with torch.no_grad():
        for p, vi in zip(params, v):
            p.add_(vi, alpha=eps)
    g_plus = grads()
    with torch.no_grad():
        for p, vi in zip(params, v):
            p.add_(vi, alpha=-2 * eps)
    g_minus = grads()
    fd = torch.cat([(a - b).flatten() / (2 * eps) for a, b in zip(g_plus, g_minus)])
    exact = torch.cat([h.flatten() for h in hv])
    assert exact.norm() > 0
    assert (exact - fd).norm() / exact.norm() < 1e-6


def test_set_attention_switches_and_math_attention_restores():
    model = GPT(tiny_config())
    kinds = lambda: {b.attn.kind for b in model.transformer.h}  # noqa: E731
    with math_attention(model) as same:
        assert same is model
        assert kinds() == {"math"} and model.config.attention == "math"
    assert kinds() == {"sdpa"} and model.config.attention == "sdpa"
    assert set_attention(model, "math") == "sdpa"
    with pytest.raises(ValueError, match=r"attention must be one of \('sdpa', 'math'\)"):
        set_attention(model, "flash")
    assert kinds() == {"math"}


def test_char_lstm_shapes_gradients_and_initial_loss():
    torch.manual_seed(0)
    model = CharLSTM(LSTMConfig(vocab_size=VOCAB, n_embd=32, n_hidden=64, n_layers=2))
    idx, targets = tokens(4, 20, seed=7), tokens(4, 20, seed=8)
    logits, loss = model(idx, targets)
    assert logits.shape == (4, 20, VOCAB)
    assert abs(loss.item() - math.log(VOCAB)) < 0.1
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().max() > 0, name
    assert model(idx)[1] is None


def test_char_lstm_default_size():
    model = CharLSTM(LSTMConfig(vocab_size=VOCAB))
    e, h = 128, 256
    lstm = 4 * h * (e + h + 2) + 4 * h * (h + h + 2)  # two layers, two bias vectors each
    assert model.num_parameters() == VOCAB * e + lstm + h * VOCAB + VOCAB


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(n_embd=30, n_head=4), "n_embd"),
        (dict(attention="flash"), "attention"),
        (dict(n_layer=0), "n_layer"),
        (dict(dropout=1.0), "dropout"),
    ],
)
def test_bad_gpt_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(**overrides)


def test_bad_preset_and_lstm_config():
    with pytest.raises(ValueError, match="'small', 'complex'"):
        gpt_config("huge", VOCAB)
    with pytest.raises(ValueError, match="n_hidden"):
        LSTMConfig(vocab_size=VOCAB, n_hidden=0)


def test_sequence_longer_than_block_size_is_rejected():
    model = GPT(tiny_config())
    with pytest.raises(ValueError, match="block_size=16"):
        model(tokens(1, 17))
