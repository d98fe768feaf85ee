"""``unionterm``: the device program and its sub-commands.

Exit codes follow sysexits: 78 (EX_CONFIG) for a configuration problem, so
systemd and a technician both see at once that the file, not the code, is at
fault; no traceback is printed for an error the user can fix.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__, eventloop, logs
from .config import DEFAULT_PATH, Config, load
from .exceptions import ConfigError, UniontermError
from .sdnotify import Notifier, watchdog_task

if TYPE_CHECKING:
    from .app import Terminal

EX_OK = 0
#: ``doctor`` found a failure, or ``provision --check`` could not reach the broker.
EX_FAILED = 1
EX_SOFTWARE = 70
EX_CANTCREAT = 73
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


def _systemd(notifier: Notifier) -> Callable[["Terminal"], Awaitable[None]]:
    """The service that tells systemd the terminal is up, then pings its watchdog while healthy."""

    async def systemd_notify(terminal: "Terminal") -> None:
        notifier.ready()  # services start once Terminal.started is set: taps are being taken
        notifier.status(f"serving: terminal {terminal.cfg.terminal.id} ({terminal.cfg.terminal.mode})")
        await watchdog_task(terminal.healthy, notifier)

    return systemd_notify


async def _run_terminal(cfg: Config) -> None:
    """Run until stopped; a signed "reload config" command starts a fresh terminal in place.

    Reloading inside the process (rather than exiting 0) matters because the
    unit restarts only on failure: an exit after a reload would leave the door
    controller stopped.
    """
    while True:
        terminal = await _run_once(cfg)
        if not terminal.reload_requested:
            return
        reloaded = _load_config(cfg.source)
        if reloaded is None:  # validated before the command was accepted; changed since
            log.error("event=reload_failed detail=%r", "config invalid on reload; keeping the old one")
        else:
            cfg = reloaded
        log.info("event=config_reloaded path=%s", cfg.source)


async def _run_once(cfg: Config) -> "Terminal":
    from drivers.factory import open_hardware  # the only door from the CLI to real devices
    from drivers.gpio import make_factory
    from drivers.keypad import open_keypad

    from .app import Terminal

    notifier = Notifier.from_environ()
    async with open_hardware(cfg) as hardware, contextlib.AsyncExitStack() as stack:
        stack.callback(notifier.close)
        terminal = Terminal(cfg, hardware)
        keypad = open_keypad(cfg.keypad, make_factory(cfg.gpio.driver))
        if keypad is not None:
            stack.callback(keypad.close)
            terminal.attach_inputs(keypad)
        terminal.services.append(_systemd(notifier))

        def stop() -> None:
            notifier.stopping()
            terminal.request_stop()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        try:
            await terminal.run()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    return terminal


def _run(args: argparse.Namespace) -> int:
    cfg = _load_config(args.config)
    if cfg is None:
        return EX_CONFIG
    logs.setup(cfg.terminal.log_level)
    try:
        eventloop.run(_run_terminal(cfg))
    except UniontermError as exc:
        log.error("event=fatal error=%r", str(exc))
        return EX_SOFTWARE
    return EX_OK


# --- doctor -----------------------------------------------------------------------------------


async def pcsc_readers(timeout: float = 2.0) -> list[str]:
    """The reader names pcscd reports (pyscard lives in drivers/, so the doctor gets this passed in)."""
    from drivers.pcsc import PcscReader

    async with PcscReader("", 0.2) as reader:
        deadline = time.monotonic() + timeout
        while not reader.readers and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return list(reader.readers)


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import config_failure, run_doctor

    try:
        cfg = load(args.config)
    except ConfigError as exc:
        report = config_failure(args.config, str(exc))
        print(report.json() if args.json else report.text())
        return EX_CONFIG
    report = eventloop.run(run_doctor(cfg, pcsc_readers, broker_timeout=args.timeout))
    print(report.json() if args.json else report.text())
    return EX_OK if report.ok else EX_FAILED


# --- provision ---------------------------------------------------------------------------------

#: Command-line flags of ``provision`` and the spec fields they set.
PROVISION_FLAGS = (
    ("--id", "terminal_id", "terminal id (also the certificate's CN)"),
    ("--mode", "mode", "access, pos or canteen"),
    ("--site", "site", "site or merchant id"),
    ("--broker", "broker", "mqtts://host[:port] (TLS) or mqtt://host[:port]"),
    ("--language", "language", "zh or en"),
    ("--state-dir", "state_dir", "where the journal and member list live"),
    ("--card-key-file", "card_key_file", "the deployment's card-hash key (hex)"),
    ("--ca", "ca_file", "the broker's CA certificate (PEM)"),
    ("--certificate", "certificate", "this terminal's certificate (PEM), once issued"),
    ("--private-key", "private_key", "its private key, if it was not generated here"),
    ("--sam-keys", "sam_key_file", "SAM master key file to import"),
)


def _provision(args: argparse.Namespace) -> int:
    from .doctor import Level, check_broker
    from .provision import Owners, Spec, ask_missing, provision, read_installed

    config_path = Path(args.config)
    try:
        spec = Spec.load(args.source) if args.source else Spec()
        flags = Spec.from_mapping({field: value for _flag, field, _help in PROVISION_FLAGS
                                   if (value := getattr(args, field))}, "command line")
        flags.backoffice_keys = tuple(args.backoffice_keys or ())
        flags.generate_key = args.generate_key
        spec = spec.merge(flags)
        if not args.non_interactive and sys.stdin.isatty():
            spec = ask_missing(spec, read_installed(config_path), input)
        result = provision(spec, config_path, owners=Owners.lookup(args.owner), reset_state=args.reset_state)
        cfg = load(config_path)
    except UniontermError as exc:
        print(f"provision error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except OSError as exc:
        print(f"provision error: {exc}", file=sys.stderr)
        return EX_CANTCREAT
    print(f"provisioned terminal {cfg.terminal.id} ({cfg.terminal.mode}) in {config_path}")
    print(f"  wrote: {', '.join(result.written)}")
    if result.csr is not None:
        print(f"  certificate request: {result.csr}")
    if result.moved_aside is not None:
        print(f"  journal and member list moved to {result.moved_aside} "
              f"({result.unacked_moved} records not yet acknowledged by the back office: hand them over)")
    else:
        print(f"  state: {cfg.terminal.state_dir} (journal and member list kept)")
    for warning in result.warnings:
        print(f"  note: {warning}")
    if not args.check:
        return EX_OK
    check = eventloop.run(check_broker(cfg))
    print(f"  broker: {check.level.value.upper()} {check.summary}" + (f" -> {check.hint}" if check.hint else ""))
    return EX_FAILED if check.level is Level.FAIL else EX_OK


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
    doctor = sub.add_parser("doctor", help="check readers, broker, TLS, clock, lists, journal, disk, GPIO")
    doctor.add_argument("--config", default=DEFAULT_PATH, help=f"config file (default {DEFAULT_PATH})")
    doctor.add_argument("--json", action="store_true", help="machine-readable report for the back office")
    doctor.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the broker")
    doctor.set_defaults(func=_doctor)
    prov = sub.add_parser("provision", help="write this terminal's config, keys and TLS identity")
    prov.add_argument("--config", default=DEFAULT_PATH, help=f"config to write (default {DEFAULT_PATH})")
    prov.add_argument("--from", dest="source", metavar="FILE.json", help="take the settings from a JSON file")
    for flag, field, text in PROVISION_FLAGS:
        prov.add_argument(flag, dest=field, default="", help=text)
    prov.add_argument("--backoffice-key", dest="backoffice_keys", action="append", metavar="HEX_OR_FILE",
                      help="back-office command key (give twice for current and next)")
    prov.add_argument("--generate-key", action="store_true", help="make a new TLS key and a CSR for the CA")
    prov.add_argument("--owner", default="", help="service user owning the keys (default unionterm, when root)")
    prov.add_argument("--reset-state", action="store_true", help="move the journal and member list aside")
    prov.add_argument("--check", action="store_true", help="connect to the broker afterwards and report")
    prov.add_argument("--non-interactive", action="store_true", help="never prompt (default when not on a TTY)")
    prov.set_defaults(func=_provision)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
