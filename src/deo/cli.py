"""The ``deo`` command: ``deo estimator`` checks the curvature estimate against Lanczos."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    from .bench.presets import PRESETS  # the names only; about 30 ms beside torch's import

    parser = argparse.ArgumentParser(
        prog="deo",
        description="Dimer-Enhanced Optimization (DEO) for PyTorch: the optimizer is deo.DEO; "
                    "this command runs its checks and benchmarks.")
    parser.add_argument("--version", action="version", version=f"deo {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench = commands.add_parser(
        "bench", help="compare DEO with the usual optimizers; writes results and a report",
        description="Run a benchmark preset: every (task, optimizer, seed) run is appended to "
                    "OUT/results.jsonl as it finishes, then OUT/report.md is written with "
                    "tables and plots.")
    bench.add_argument("--preset", default="quick", type=_preset,
                       help="one of: " + ", ".join(PRESETS) + " (default: quick)")
    bench.add_argument("--out", metavar="DIR", default="deo-bench",
                       help="output folder (default: ./deo-bench)")
    bench.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    bench.add_argument("--seeds", type=_at_least(1), default=None, metavar="N",
                       help="seeds per run (default: the preset's)")
    bench.add_argument("--first-seed", type=_at_least(0), default=0, metavar="K",
                       help="the first seed: seeds K, K+1, ... (default 0; fresh seeds for a "
                            "configuration chosen on the first ones)")
    bench.add_argument("--only", action="append", default=None, metavar="NAME",
                       help="run only this one of the preset's optimizers (repeatable; names "
                            "hold commas, as in deo-adamw-ritz:target=max,alpha=0.5)")
    bench.add_argument("--data", metavar="PATH", default=None,
                       help="text file for the language tasks (default: the pydoc topics text "
                            "that ships with Python; tiny Shakespeare: "
                            "shakespeare_char/input.txt)")
    bench.add_argument("--resume", action="store_true",
                       help="skip the runs already in OUT/results.jsonl and continue unfinished "
                            "ones from their checkpoints (OUT/checkpoints/)")
    bench.add_argument("--checkpoint-every", type=_at_least(1), default=None, metavar="K",
                       help="steps between checkpoints of a run in progress (default 1000)")
    bench.add_argument("--flush-denormal", action="store_true",
                       help="treat denormal floats as zero on the CPU (torch.set_flush_denormal,"
                            " in worker processes that set it before torch starts a thread): a"
                            " run whose activations decay into denormals, as a collapsed one,"
                            " runs several times faster; its numerics may differ from a run "
                            "without it, so each record's config says so (default off)")
    bench.add_argument("--no-progress", action="store_true", help="no progress bars")
    bench.add_argument("--workers", type=_at_least(1), default=1, metavar="W",
                       help="runs at a time, each in its own process (default 1)")
    estimator = commands.add_parser(
        "estimator", help="compare each rotation rule's N with Lanczos ground truth",
        description="Train the character GPT with AdamW, fix a batch, compute its Hessian's "
                    "extreme eigenpairs by Lanczos, then turn N with each rotation rule on "
                    "that batch and report curvature along N and cos(N, v_min).")
    estimator.add_argument("--data", metavar="PATH", default=None,
                       help="text file (default: the pydoc topics text that ships with Python)")
    estimator.add_argument("--model", choices=["small", "complex"], default="small")
    estimator.add_argument("--train-steps", type=_at_least(0), default=300, metavar="K")
    estimator.add_argument("--rules", type=_rules, default=("ritz", "oja"),
                       help="comma-separated rotation rules (default: ritz,oja)")
    estimator.add_argument("--evaluations", type=_at_least(1), default=200, metavar="E",
                       help="displaced-gradient evaluations per rule (default: 200)")
    estimator.add_argument("--seed", type=int, default=0)
    estimator.add_argument("--out", metavar="FILE", default=None, help="write the results as JSON")

    track = commands.add_parser(
        "track", help="record N against Lanczos ground truth during DEO training",
        description="Train the character GPT with DEO (AdamW base) and every --every steps "
                    "compare N with the extreme eigenpairs of a fixed evaluation batch's "
                    "Hessian; one JSON line per checkpoint, appended as it is made.")
    track.add_argument("--data", metavar="PATH", default=None)
    track.add_argument("--model", choices=["small", "complex"], default="small")
    track.add_argument("--steps", type=_at_least(1), default=2000)
    track.add_argument("--every", type=_at_least(1), default=250)
    track.add_argument("--rotation", type=_rule, default="ritz")
    track.add_argument("--probes-per-update", type=_at_least(1), default=1, metavar="P")
    track.add_argument("--hessian-memory", type=float, default=0.0, metavar="M")
    track.add_argument("--ritz-window", type=_at_least(1), default=1, metavar="K")
    track.add_argument("--interval", type=_at_least(1), default=10)
    track.add_argument("--alpha", type=float, default=5.0)
    track.add_argument("--seed", type=int, default=0)
    track.add_argument("--out", metavar="FILE", required=True, help="JSONL file to append to")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "bench":
        return _bench(args)
    if args.command == "estimator":
        return _estimator(args)
    if args.command == "track":
        return _track(args)
    parser.print_help()
    return 0


def _bench(args: argparse.Namespace) -> int:
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("deo bench: error: --device cuda, but torch sees no CUDA device on this machine",
              file=sys.stderr)
        return 2
    if args.data is not None and not Path(args.data).is_file():
        print(f"deo bench: error: --data {args.data!r} is not a file", file=sys.stderr)
        return 2
    from .bench.presets import build_preset
    from .bench.report import write_report
    from .bench.runner import run_bench

    preset = build_preset(args.preset, data=args.data)
    try:
        only = None if args.only is None else tuple(args.only)
        runs = preset.runs(args.seeds, first_seed=args.first_seed, only=only)
        every = {} if args.checkpoint_every is None else {"checkpoint_every": args.checkpoint_every}
        settings = {"preset": preset.name, "device": args.device, "progress": not args.no_progress,
                    "workers": args.workers, "flush_denormal": args.flush_denormal, **every}
        resume = args.resume
        tuned = [name for name in preset.tuned if only is None or name in only]
        if tuned:  # the short grid first, then each tuned baseline at its best lr
            from .bench.task import RESULTS_FILE, read_results
            from .bench.tuning import tuned_runs, tuning_runs

            run_bench(tuning_runs(preset.tasks, tuned), args.out, resume=resume, **settings)
            records, _, _ = read_results(Path(args.out) / RESULTS_FILE)
            seeds = range(args.first_seed, args.first_seed + (args.seeds or preset.seeds))
            runs = tuned_runs(preset.tasks, tuned, records, seeds) + runs
            resume = True  # the grid's records are this bench's own
        run_bench(runs, args.out, resume=resume, **settings)
    except (*_USER_ERRORS, FileExistsError) as err:
        print(f"deo bench: error: {err}", file=sys.stderr)
        return 2
    report = write_report(args.out, title=f"deo bench --preset {preset.name}")
    print(f"deo bench: report written to {report}")
    return 0


def _preset(text: str) -> str:
    from .bench.presets import PRESETS

    if text not in PRESETS:
        raise argparse.ArgumentTypeError(f"expected one of {list(PRESETS)}, got {text!r}")
    return text


# What a user's input can make the commands raise: printed as one line, exit status 2.
_USER_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, ValueError, ImportError)


def _estimator(args: argparse.Namespace) -> int:
    from .bench.estimator import EstimatorConfig, run_estimator  # heavy imports only when needed
    from .bench.files import ensure_writable_file

    config = EstimatorConfig(data=args.data, model=args.model, train_steps=args.train_steps,
                         rules=args.rules, evaluations=args.evaluations, seed=args.seed)
    try:
        if args.out is not None:  # minutes of work must not end in an unwritable file
            ensure_writable_file(args.out, "--out")
        run_estimator(config, out=args.out)
    except _USER_ERRORS as err:
        print(f"deo estimator: error: {err}", file=sys.stderr)
        return 2
    return 0


def _track(args: argparse.Namespace) -> int:
    from .bench.files import ensure_writable_file
    from .bench.tracking import TrackConfig, median_ratio, track_training

    if args.every > args.steps:
        print(f"deo track: error: --every {args.every} is larger than --steps {args.steps}, so "
              f"no checkpoint would be recorded; pass --every <= --steps", file=sys.stderr)
        return 2

    config = TrackConfig(data=args.data, model=args.model, steps=args.steps, every=args.every,
                         rotation=args.rotation, probes_per_update=args.probes_per_update,
                         hessian_memory=args.hessian_memory, ritz_window=args.ritz_window,
                         interval=args.interval,
                         alpha=args.alpha, seed=args.seed)
    try:
        ensure_writable_file(args.out, "--out")
        records = track_training(config, args.out)
    except _USER_ERRORS as err:
        print(f"deo track: error: {err}", file=sys.stderr)
        return 2
    if records:
        print(f"median over checkpoints of (curvature along N) / lambda_min: "
              f"{median_ratio(records):.2f}")
    return 0


def _at_least(low: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value
    return parse


def _rule(text: str) -> str:
    from .dimer import ROTATION_RULES

    if text not in ROTATION_RULES:
        raise argparse.ArgumentTypeError(
            f"expected one of {sorted(ROTATION_RULES)}, got {text!r}")
    return text


def _rules(text: str) -> tuple[str, ...]:
    rules = tuple(_rule(r.strip()) for r in text.split(",") if r.strip())
    if not rules:
        raise argparse.ArgumentTypeError("expected at least one rotation rule")
    return rules


if __name__ == "__main__":
    sys.exit(main())
