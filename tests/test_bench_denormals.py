"""The bench's check of denormal flushing: every one of torch's threads, and the record."""

import subprocess
import sys

import pytest
import torch

from deo.bench.denormals import note_flushing

# torch.set_flush_denormal acts on the calling thread and on the threads started after it
PROBE = """
import sys, torch
from deo.bench.denormals import denormals_flushed
torch.set_num_threads(2)
case = sys.argv[1]
if case == "first":  # before torch starts a thread: every thread inherits it
    torch.set_flush_denormal(True)
torch.ones(1 << 20).mul(2.0).sum()  # torch's threads are running now
if case == "late":  # the calling thread alone
    torch.set_flush_denormal(True)
try:
    print(denormals_flushed())
except RuntimeError as err:
    print("RuntimeError:", err)
"""


@pytest.mark.parametrize("case, expected", [("default", "False"), ("first", "True"),
                                            ("late", "RuntimeError: denormal floats are "
                                                     "flushed on some of torch's 2 threads")])
def test_denormals_flushed_looks_at_every_thread(case, expected):
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush denormals")
    out = subprocess.run([sys.executable, "-c", PROBE, case], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.startswith(expected)


@pytest.mark.parametrize("stretches, expected", [
    ([(True, 0)], {"flush_denormal_from_step": 0}),
    ([(False, 0)], {}),  # as every record before the switch
    ([(False, 0), (True, 2000)], {"flush_denormal_from_step": 2000}),
    ([(True, 0), (False, 1000)],
     {"flush_denormal_from_step": 0, "flush_denormal_until_step": 1000}),
])
def test_a_record_names_the_steps_that_flushed(stretches, expected):
    config = {"task": {}}
    for flushed, start in stretches:  # a run and its resumes, each from its checkpoint
        note_flushing(config, flushed, start)
    assert {k: v for k, v in config.items() if k != "task"} == expected


def test_a_run_cannot_flush_again_after_it_stopped():
    config = {}
    note_flushing(config, True, 0)
    note_flushing(config, False, 1000)
    with pytest.raises(ValueError, match="flushed denormals from step 0 to 1000"):
        note_flushing(config, True, 2000)
