"""The README's examples must run as written.

Each tested example is marked by an HTML comment on the line before its code fence,

    <!-- test: usage -->
    ```python
    ...
    ```

and the tests below pick the examples by marker name, not by position, so the README can be
reordered or grow new examples without a test silently running the wrong one.
"""

import math
import re
from pathlib import Path

import pytest
import torch

import deo
from deo.bench.optimizers import parse_optimizer
from deo.bench.optimizers import recommended as bench_recommended

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = re.compile(r"^<!-- test: ([\w-]+) -->\n```python\n(.*?)^```", flags=re.S | re.M)
NAMES = ("usage", "recommended", "two-phase", "stability")  # the markers these tests use


def marked_snippets() -> dict[str, tuple[int, str]]:
    """{marker: (line of the code's first line in README.md, code)}, each marker once."""
    text = README.read_text()
    found: dict[str, tuple[int, str]] = {}
    for match in MARKER.finditer(text):
        name = match.group(1)
        assert name not in found, f"README.md: marker {name!r} is used twice"
        found[name] = (text.count("\n", 0, match.start(2)) + 1, match.group(2))
    return found


def run_snippet(name: str, namespace: dict | None = None) -> dict:
    """Execute the README's example ``name`` in ``namespace``; tracebacks give README lines."""
    snippets = marked_snippets()
    assert name in snippets, f"README.md has no example marked <!-- test: {name} -->; " \
                             f"markers found: {sorted(snippets)}"
    line, code = snippets[name]
    namespace = {} if namespace is None else namespace
    exec(compile("\n" * (line - 1) + code, str(README), "exec"), namespace)
    return namespace


def test_every_marker_is_found_once_and_precedes_a_python_fence():
    """Every ``<!-- test: ... -->`` in the README is followed by a python block the lookup
    finds (a marker the regex misses would drop its example from the tests unnoticed)."""
    text = README.read_text()
    markers = re.findall(r"<!-- test: ([^>]*?) -->", text)
    snippets = marked_snippets()
    assert sorted(markers) == sorted(snippets), "a marker is not on the line before ```python"
    assert set(NAMES) <= set(snippets), f"missing markers: {set(NAMES) - set(snippets)}"
    for name, (line, code) in snippets.items():
        compile(code, f"README.md, example {name!r} (line {line})", "exec")  # valid Python


def test_readme_training_loop_runs_and_probes(capsys):
    opt = run_snippet("usage")["opt"]
    steps = 100  # the example's 100 batches
    # probes_per_update displaced gradients per probe step (0, interval, ...), one per trial
    expected = math.ceil(steps / opt.config.interval) * opt.config.probes_per_update + \
        int(opt.stats["escape_trials"])
    assert int(opt.stats["extra_gradients"]) == expected
    assert torch.isfinite(opt.curvature)
    assert "curvature along N" in capsys.readouterr().out


def test_readme_two_phase_loop_runs_and_probes():
    """The two-phase example continues the usage example's model and data, without a
    closure: it probes on the same schedule as the closure convention."""
    namespace = run_snippet("usage")
    opt = run_snippet("two-phase", namespace)["opt"]
    steps = len(namespace["data"])
    expected = math.ceil(steps / opt.config.interval) * opt.config.probes_per_update + \
        int(opt.stats["escape_trials"])
    assert int(opt.stats["extra_gradients"]) == expected
    assert int(opt.stats["inconsistent_probes"]) == 0  # both passes saw the same batches
    assert torch.isfinite(opt.curvature)


def test_readme_recommended_configuration_is_the_benchmarks():
    """The README's recommended DEO must be the bench's, setting for setting, so the two cannot
    drift apart when a configuration is frozen anew."""
    namespace = run_snippet("recommended", {"torch": torch, "deo": deo,
                                            "model": torch.nn.Linear(3, 1)})
    config = namespace["opt"].config
    spec = parse_optimizer(bench_recommended("adamw", "saddle"))
    assert config.rotation == spec.rotation
    for setting, value in spec.options.items():
        assert getattr(config, setting) == value, setting
    # the other lines mean what the README says they mean
    paper = namespace["paper"].config  # the paper's rule: the defaults
    assert (paper.rotation, paper.alpha, paper.interval) == ("oja", 5.0, 10)
    wrapped, cfg = namespace["wrapped"].config, namespace["cfg"]
    assert (wrapped.rotation, wrapped.interval) == (cfg.rotation, cfg.interval) == ("ritz", 5)


@pytest.mark.parametrize("name", NAMES)
def test_marker_lookup_names_the_example(name):
    line, code = marked_snippets()[name]
    assert README.read_text().splitlines()[line - 1] == code.splitlines()[0]


def test_readme_stability_snippet_is_the_benchmarks_frozen_configuration():
    namespace = run_snippet("stability", {"torch": torch, "deo": deo,
                                          "model": torch.nn.Linear(3, 1)})
    config = namespace["stable"].config
    spec = parse_optimizer(bench_recommended("adamw", "stability"))
    assert config.rotation == spec.rotation == "ritz"
    assert {key: getattr(config, key) for key in spec.options} == spec.options
    # the paragraph under it spells the frozen settings out: they must be the code's
    text = README.read_text()
    spelled = ", ".join(f"{key}={value!r}" for key, value in deo.recommended("stability").items())
    assert f"`{spelled.replace(chr(39), chr(34))}`" in text.replace("\n  ", " ")
