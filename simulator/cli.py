"""``unionterm-sim``: the simulator's commands."""

from __future__ import annotations

import argparse
import logging
import sys

from terminal import logs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unionterm-sim", description="Simulated unionterm terminal")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a complete simulated terminal with scripted taps")
    demo.add_argument("--out", default="out/demo", help="folder for the PNG screens (default out/demo)")
    demo.add_argument("--mode", default="access", choices=["access"], help="terminal mode")
    demo.add_argument("--verbose", action="store_true", help="show the terminal's own log lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup("info" if getattr(args, "verbose", False) else "warning")
    if args.command == "demo":
        from .demo import main as demo_main

        return demo_main(args.out, args.mode)
    return 2


if __name__ == "__main__":
    logging.captureWarnings(True)
    sys.exit(main())
