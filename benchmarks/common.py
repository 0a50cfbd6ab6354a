"""What the benchmark scripts share: the machine's description, sync-aware timing, and
writing a result as JSON plus a Markdown table."""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def machine(device: torch.device) -> dict:
    return {"device": str(device), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}


def seconds_per_call(call: Callable[[], object], device: torch.device, calls: int) -> float:
    """Wall time of ``calls`` calls over their number; waits for the GPU at both ends."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    started = time.perf_counter()
    for _ in range(calls):
        call()
    sync()
    return (time.perf_counter() - started) / calls


def result_stem(out: str | None, name: str, device: torch.device) -> Path:
    """Where a script writes: ``--out`` if given, else results/<name>_<device type>."""
    return Path(out) if out else RESULTS / f"{name}_{device.type}"


def write_result(stem: Path, payload: dict, table: list[str]) -> None:
    """stem.json (the payload, with the command line) and stem.md (header + table)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(sys.argv)
    stem.with_suffix(".json").write_text(json.dumps({"command": command, **payload}, indent=1))
    lines = [f"Machine: {payload['machine']}", "", f"Command: {command}", "", *table]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
