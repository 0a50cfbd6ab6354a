"""The README's example training loop must run as written."""

import re
from pathlib import Path

import torch

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
