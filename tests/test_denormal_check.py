"""benchmarks/denormal_check.py: where two loss series part, and which record may stand for
a run rerun with denormals flushed."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def check():
    sys.path.insert(0, str(BENCHMARKS))  # the script imports its neighbour common.py
    try:
        spec = importlib.util.spec_from_file_location("denormal_check",
                                                      BENCHMARKS / "denormal_check.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def series(*losses, every=20):
    return [[every * i, loss] for i, loss in enumerate(losses)]


def test_first_difference_is_a_step_and_nan_equals_nan(check):
    assert check.first_difference(series(3.0, 2.0), series(3.0, 2.0)) is None
    assert check.first_difference(series(3.0, math.nan), series(3.0, math.nan)) is None
    assert check.first_difference(series(3.0, 2.0, 1.0), series(3.0, 2.0, 1.5)) == 40
    assert check.first_difference(series(3.0, 2.0), series(3.0, 2.0, 1.0)) == 40
    assert check.first_difference(series(3.0, math.nan), series(3.0, 2.0)) == 20


def config(lr=1e-3, **flushing):
    return {"config": {"task": {"name": "gpt", "lr": lr}, "optimizer": {"class": "AdamW"},
                       **flushing}}


def test_only_a_run_flushed_throughout_with_the_same_settings_stands_for_the_reference(check):
    before = config()
    assert check.same_run(before, config(flush_denormal_from_step=0))
    assert not check.same_run(before, config())  # not flushed
    assert not check.same_run(before, config(flush_denormal_from_step=1000))
    assert not check.same_run(before, config(flush_denormal_from_step=0,
                                             flush_denormal_until_step=2000))
    assert not check.same_run(before, config(lr=1e-2, flush_denormal_from_step=0))
