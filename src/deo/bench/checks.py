"""Argument checks shared by the bench's tasks and models: each raises ValueError naming the
argument, so a bad setting fails when the task or model is built, not steps into a run."""

from __future__ import annotations

import math
from typing import Any


def check_int(name: str, value: Any, minimum: int) -> None:
    """``value`` is an int (not a bool) >= ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")


def check_positive(name: str, value: Any, *, finite: bool = True) -> None:
    """``value`` is an int or float (not a bool) > 0, and finite unless ``finite=False``."""
    if finite:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name}: expected a number > 0, got {value!r}")


def check_positive_ints(config: Any, *names: str) -> None:
    """The attributes ``names`` of ``config`` are ints (not bools) >= 1."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
