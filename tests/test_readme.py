"""The README's example training loop must run as written."""

import re
from pathlib import Path

import torch

import deo
from deo.bench.optimizers import RECOMMENDED, parse_optimizer

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_training_loop_runs_and_probes(capsys):
    loop = python_blocks()[0]
    namespace = {}
    exec(compile(loop, str(README), "exec"), namespace)
    opt = namespace["opt"]
    assert int(opt.stats["probe_count"]) == 10  # 100 steps, interval 10
    assert torch.isfinite(opt.curvature)
    assert "curvature along N" in capsys.readouterr().out


def test_readme_recommended_configuration_is_the_benchmarks():
    """The README's recommended DEO must be deo.bench.optimizers.RECOMMENDED, setting for
    setting, so the two cannot drift apart when a configuration is frozen anew."""
    (block,) = [b for b in python_blocks() if 'escape_rule="checked"' in b]
    namespace = {"torch": torch, "deo": deo, "model": torch.nn.Linear(3, 1)}
    exec(compile(block, str(README), "exec"), namespace)
    opt = namespace["opt"]
    spec = parse_optimizer(f"deo-adamw-ritz:{RECOMMENDED}")
    assert opt.rotation == spec.rotation
    for setting, value in spec.options.items():
        assert getattr(opt, setting) == value, setting
