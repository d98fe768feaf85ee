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
    demo.add_argument("--mode", default="all", choices=["all", "access", "pos", "canteen"],
                      help="terminal mode, or all three one after the other (default)")
    demo.add_argument("--verbose", action="store_true", help="show the terminal's own log lines")
    ui = sub.add_parser("ui", help="run a simulated terminal and a local web page to use and watch it")
    ui.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (default 8080, 0: any free)")
    ui.add_argument("--mode", default="access", choices=["access", "pos", "canteen"], help="terminal mode")
    ui.add_argument("--workdir", default=None, help="folder for the rig's state (default: a new temp folder)")
    ui.add_argument("--verbose", action="store_true", help="show the terminal's own log lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup("info" if getattr(args, "verbose", False) else "warning")
    if args.command == "demo":
        from .demo import main as demo_main

        return demo_main(args.out, args.mode)
    if args.command == "ui":
        from .web.adapters import runnable_modes
        from .web.server import main as ui_main

        if args.mode not in runnable_modes():
            print(f"unionterm-sim ui: mode {args.mode!r} cannot run in the workbench yet "
                  f"(runs: {', '.join(runnable_modes())})", file=sys.stderr)
            return 2
        return ui_main(args.port, args.mode, args.workdir)
    return 2


if __name__ == "__main__":
    logging.captureWarnings(True)
    sys.exit(main())
