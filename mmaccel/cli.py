"""The ``mmaccel`` command line. Argument parsing lives here and nowhere in the library."""

from __future__ import annotations

import argparse
import sys

from mmaccel.methods import DESCRIPTIONS, METHODS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmaccel", description="Fast decoding for autoregressive generators.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("methods", help="list the decoding methods")
    args = parser.parse_args(argv)
    if args.command == "methods":
        for name in METHODS:
            print(f"{name:12s} {DESCRIPTIONS[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
