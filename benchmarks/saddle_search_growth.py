"""Exploration on the saddle suite's selection split only: the line search's growth factor
(deo.escape.SEARCH_GROWTH, set here for the run) and two probes per update, on GD and SGD.

    python benchmarks/saddle_search_growth.py 8 OUT SETTINGS [SETTINGS ...]
e.g. SETTINGS = alpha=0,escape_step=1,interval=5,escape_rule=search,displacement=auto
Appends to OUT/selection.jsonl (the saddle_suite.py format; its table script reads it).
"""
import json  # noqa: F401
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import saddle_suite as s  # noqa: E402

from deo import escape  # noqa: E402

growth, out, settings = float(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
escape.SEARCH_GROWTH = growth
s.optimizers = lambda split: ["gd", "sgd"] + [f"deo-{b}-ritz:{x}" for b in ("gd", "sgd")
                                             for x in settings]
out.mkdir(parents=True, exist_ok=True)
s.run("selection", out, 5)
