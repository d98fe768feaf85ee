"""``python -m bench``: run the benchmarks, print a table, update bench/results.json.

``results.json`` is one flat object of named figures; a partial run (``--only``)
updates its own figures and keeps the others.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from collections.abc import Callable
from pathlib import Path

from terminal import logs

RESULTS = Path(__file__).with_name("results.json")


def _tap(args: argparse.Namespace) -> dict[str, float]:
    from .tap_latency import run

    return run(args.taps)


def _auth(args: argparse.Namespace) -> dict[str, float]:
    from .auth_bench import run

    return run(args.auth_taps)


def _identify(args: argparse.Namespace) -> dict[str, float]:
    from .identify_cold import run

    return run()


def _members(args: argparse.Namespace) -> dict[str, float]:
    from .members_bench import run

    return run()


def _journal(args: argparse.Namespace) -> dict[str, float]:
    from .journal_bench import run

    return run()


BENCHES: dict[str, Callable[[argparse.Namespace], dict[str, float]]] = {
    "tap": _tap,
    "auth": _auth,
    "identify": _identify,
    "members": _members,
    "journal": _journal,
}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHES), help="run only these")
    parser.add_argument("--taps", type=int, default=1000, help="taps for the UID latency benchmark")
    parser.add_argument("--auth-taps", type=int, default=300, help="taps for the union-card benchmark")
    args = parser.parse_args()
    logs.setup("warning")
    logging.getLogger("unionterm").setLevel(logging.WARNING)
    results: dict[str, float | str] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for name in args.only or list(BENCHES):
        print(f"running {name} ...", flush=True)
        started = time.monotonic()
        figures = BENCHES[name](args)
        results.update(figures)
        print(f"  {name}: {time.monotonic() - started:.0f} s", flush=True)
    results["machine"] = f"{platform.machine()} {platform.python_implementation()} {platform.python_version()}"
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    width = max(len(k) for k in results)
    print(f"{'figure':<{width}}  value")
    for key in sorted(results):
        print(f"{key:<{width}}  {results[key]}")
    print(f"written: {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
