"""Flushing denormal floats to zero on the CPU, as a property of a bench process.

A run whose activations decay into denormals (below 1.18e-38 in float32), as a collapsed
GPT does, can run several times slower on the CPU. ``torch.set_flush_denormal(True)`` makes
the arithmetic treat them as zero, but only on the calling thread and on the threads it
starts afterwards: torch's intra-op threads that exist already keep their setting. So the bench
flushes in worker processes that set it before torch starts any thread
(``runner._start_worker``), and each run checks what is in force on all of torch's threads
(``denormals_flushed``) and says so in its record (``note_flushing``).
"""

from __future__ import annotations

import torch

# elementwise ops split their range among torch's threads in chunks of at least this many
_GRAIN = 1 << 15


def check_flush_denormal(flush_denormal: bool) -> None:
    """A ValueError, before any work, for a bad ``flush_denormal`` or a CPU without it."""
    if not isinstance(flush_denormal, bool):
        raise ValueError(f"flush_denormal: expected True or False, got {flush_denormal!r}")
    if not flush_denormal:
        return
    # setting the calling thread's mode to what it is reports whether the CPU has the mode
    if not torch.set_flush_denormal(bool(_flushed(torch.ones(1, dtype=torch.int32)))):
        raise ValueError("flush_denormal: this CPU cannot flush denormals "
                         "(torch.set_flush_denormal returned False); run without it")


def denormals_flushed() -> bool:
    """Whether CPU arithmetic flushes denormals on every one of torch's intra-op threads.

    Multiplies the smallest float32 denormal by 1 over a range long enough that each thread
    takes a share (with torch's OpenMP backend, one chunk per thread); a RuntimeError if
    some threads flush and others do not, since a run's numbers would then depend on which
    thread did what.
    """
    threads = torch.get_num_threads()
    flushed = _flushed(torch.ones(2 * _GRAIN * threads, dtype=torch.int32))
    if flushed.any() and not flushed.all():
        raise RuntimeError(
            f"denormal floats are flushed on some of torch's {threads} threads and not on "
            f"others: torch.set_flush_denormal acts on the calling thread and the threads "
            f"it starts afterwards. Call it before torch starts its threads (deo bench "
            f"--flush-denormal does), or not at all")
    return bool(flushed.all())


def _flushed(bits: torch.Tensor) -> torch.Tensor:
    """Per element: whether the float32 ``bits`` (the smallest denormal, 1) times 1 came out
    as zero. The bits are compared as integers, since under flushing a denormal that is
    compared as a float equals 0 too."""
    return (bits.view(torch.float32) * 1.0).view(torch.int32) == 0


def note_flushing(config: dict, flushed: bool, start: int) -> None:
    """Mark in a record's ``config`` the steps that ran with denormals flushed.

    ``flush_denormal_from_step``: the step from which the run flushed (0: all of it);
    ``flush_denormal_until_step``: where a resumed run went on without flushing. ``start``
    is the step this stretch of the run begins at. A run that never flushed has neither key,
    as every record before the switch existed. A ValueError for a run that would flush
    again after it stopped: two keys cannot say that.
    """
    if flushed and "flush_denormal_until_step" in config:
        raise ValueError(f"flush_denormal: this run flushed denormals from step "
                         f"{config['flush_denormal_from_step']} to "
                         f"{config['flush_denormal_until_step']} and then went on without; "
                         f"resume it without flushing, or start it over")
    if flushed and "flush_denormal_from_step" not in config:
        config["flush_denormal_from_step"] = start
    elif not flushed and "flush_denormal_from_step" in config \
            and "flush_denormal_until_step" not in config:
        config["flush_denormal_until_step"] = start
