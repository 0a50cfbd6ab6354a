"""The ``deo`` command. ``deo bench`` and ``deo probe`` arrive with the benchmark package."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deo",
        description="Dimer-Enhanced Optimization (DEO) for PyTorch: the optimizer is deo.DEO; "
                    "this command will run the benchmarks.")
    parser.add_argument("--version", action="version", version=f"deo {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
