"""The ``deo`` command: ``deo probe`` checks the curvature estimate against Lanczos."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deo",
        description="Dimer-Enhanced Optimization (DEO) for PyTorch: the optimizer is deo.DEO; "
                    "this command runs its checks and benchmarks.")
    parser.add_argument("--version", action="version", version=f"deo {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    probe = commands.add_parser(
        "probe", help="compare each rotation rule's N with Lanczos ground truth",
        description="Train the character GPT with AdamW, fix a batch, compute its Hessian's "
                    "extreme eigenpairs by Lanczos, then turn N with each rotation rule on "
                    "that batch and report curvature along N and cos(N, v_min).")
    probe.add_argument("--data", metavar="PATH", default=None,
                       help="text file (default: the pydoc topics text that ships with Python)")
    probe.add_argument("--model", choices=["small", "complex"], default="small")
    probe.add_argument("--train-steps", type=_at_least(0), default=300, metavar="K")
    probe.add_argument("--rules", type=_rules, default=("ritz", "oja"),
                       help="comma-separated rotation rules (default: ritz,oja)")
    probe.add_argument("--evaluations", type=_at_least(1), default=200, metavar="E",
                       help="displaced-gradient evaluations per rule (default: 200)")
    probe.add_argument("--seed", type=int, default=0)
    probe.add_argument("--out", metavar="FILE", default=None, help="write the results as JSON")

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
    track.add_argument("--probes-per-update", type=_at_least(1), default=None, metavar="P")
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
    if args.command == "probe":
        return _probe(args)
    if args.command == "track":
        return _track(args)
    parser.print_help()
    return 0


def _probe(args: argparse.Namespace) -> int:
    from .bench.probe import ProbeConfig, run_probe  # heavy imports only when needed

    config = ProbeConfig(data=args.data, model=args.model, train_steps=args.train_steps,
                         rules=args.rules, evaluations=args.evaluations, seed=args.seed)
    try:
        run_probe(config, out=args.out)
    except (FileNotFoundError, ValueError, ImportError) as err:
        print(f"deo probe: error: {err}", file=sys.stderr)
        return 2
    return 0


def _track(args: argparse.Namespace) -> int:
    from .bench.tracking import TrackConfig, median_ratio, track_training

    config = TrackConfig(data=args.data, model=args.model, steps=args.steps, every=args.every,
                         rotation=args.rotation, probes_per_update=args.probes_per_update,
                         hessian_memory=args.hessian_memory, ritz_window=args.ritz_window,
                         interval=args.interval,
                         alpha=args.alpha, seed=args.seed)
    try:
        records = track_training(config, args.out)
    except (FileNotFoundError, ValueError, ImportError) as err:
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
