"""``unionterm``: the device program and its sub-commands.

Exit codes follow sysexits: 78 (EX_CONFIG) for a configuration problem, so
systemd and a technician both see at once that the file, not the code, is at
fault; no traceback is printed for an error the user can fix.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from . import __version__, logs
from .config import DEFAULT_PATH, Config, load
from .exceptions import ConfigError, UniontermError

EX_OK = 0
EX_SOFTWARE = 70
EX_CONFIG = 78

log = logging.getLogger("unionterm.cli")


def _load_config(path: str) -> Config | None:
    """Load and validate; on failure print the one-line reason (no traceback) and return None."""
    try:
        return load(path)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return None


def _check_config(args: argparse.Namespace) -> int:
    cfg = _load_config(args.path)
    if cfg is None:
        return EX_CONFIG
    print(f"{args.path}: ok (terminal {cfg.terminal.id}, mode {cfg.terminal.mode})")
    return EX_OK


async def _run_terminal(cfg: Config) -> None:
    from drivers.factory import open_hardware  # the only door from the CLI to real devices

    from .app import Terminal

    async with open_hardware(cfg) as hardware:
        terminal = Terminal(cfg, hardware)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, terminal.request_stop)
        await terminal.run()


def _run(args: argparse.Namespace) -> int:
    cfg = _load_config(args.config)
    if cfg is None:
        return EX_CONFIG
    logs.setup(cfg.terminal.log_level)
    try:
        asyncio.run(_run_terminal(cfg))
    except UniontermError as exc:
        log.error("event=fatal error=%r", str(exc))
        return EX_SOFTWARE
    return EX_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unionterm", description="Union member-card terminal")
    parser.add_argument("--version", action="version", version=f"unionterm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the terminal")
    run.add_argument("--config", default=DEFAULT_PATH, help=f"config file (default {DEFAULT_PATH})")
    run.set_defaults(func=_run)
    check = sub.add_parser("check-config", help="validate a config file; exit 0 or 78")
    check.add_argument("path", nargs="?", default=DEFAULT_PATH)
    check.set_defaults(func=_check_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
