"""examples/nanogpt_style.py runs, with a GradScaler, clipping and accumulation outside any
closure, and a run stopped and resumed from its checkpoint ends where an unbroken run ends."""

import importlib.util
from pathlib import Path

import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "nanogpt_style.py"
TINY = ["--steps", "8", "--save-every", "100", "--batch-size", "4", "--block-size", "16",
        "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--warmup", "2",
        "--accumulation", "2", "--dtype", "float16", "--device", "cpu"]


def load_example():
    spec = importlib.util.spec_from_file_location("nanogpt_style", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_nanogpt_style_loop_trains_and_resumes_bit_for_bit(tmp_path):
    example = load_example()
    unbroken = example.train(example.parse_args([*TINY, "--out", str(tmp_path / "a")]))
    first = example.train(example.parse_args([*TINY, "--out", str(tmp_path / "b"),
                                              "--stop-after", "3"]))
    rest = example.train(example.parse_args([*TINY, "--out", str(tmp_path / "b"),
                                             "--resume"]))
    assert len(unbroken) == 8 and len(first) == 3 and len(rest) == 5
    assert first + rest == unbroken  # the losses, as floats, bit for bit
    a = torch.load(tmp_path / "a" / "ckpt.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=False)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    deo_state = a["optimizer"]["deo"]
    # the recommended configuration probes every 5 steps (0 and 5): its passes ran in the loop
    assert deo_state["steps"] == 8 and deo_state["extra_gradients"] >= 2
    assert deo_state["inconsistent_probes"] == 0  # same micro-batches, same dropout masks
    resumed = b["optimizer"]["deo"]
    for key in ("steps", "extra_gradients", "escapes", "escape_trials", "rule", "escape"):
        assert deo_state[key] == resumed[key], key
    for key, value in deo_state["stats"].items():
        assert torch.equal(value, resumed["stats"][key]) or bool(value.isnan()), key
    assert a["scaler"]["scale"] == b["scaler"]["scale"] > 0  # fp16 loss scaling was on
