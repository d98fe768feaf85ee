"""``unionterm-backoffice``: the reference back office for member lists, on the command line.

State lives in one folder (``--home``, default ``./backoffice``; see
:mod:`.home`). Typical pilot session::

    unionterm-backoffice keys generate                 # then install keys/<kid>.pub on terminals
    unionterm-backoffice members generate --count 1100000
    unionterm-backoffice members import changes.csv    # all rows valid, or nothing imported
    unionterm-backoffice publish snapshot --scope all
    unionterm-backoffice publish delta --scope all     # after further imports
    unionterm-backoffice block 04A1B2C3D4E5F6 --kind union --reason lost
    unionterm-backoffice serve                         # answers resync requests, keeps reports
    unionterm-backoffice members diff                  # which terminals differ from what was published

Exit codes follow sysexits: 65 a data file with errors, 69 broker
unreachable, 78 missing key or bad argument value; ``members diff`` exits 1
when any terminal differs.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import sys
from collections.abc import Awaitable, Callable

import aiomqtt

from terminal import logs
from terminal.cardref import KINDS, card_ref
from terminal.exceptions import ConfigError, ImportRejected, PayloadError
from terminal.sync.hotlist import ADD_REASONS, REMOVE_REASONS
from terminal.sync.strict import HEX64_RE
from terminal.sync.topics import DEFAULT_PREFIX, check_scope

from .csv_import import parse_card_id, read_members_csv
from .generate import generate_members
from .home import BackOfficeHome
from .office import DAY, BackOffice, BrokerSettings, diff_reports

EX_OK = 0
EX_DIFFERS = 1
EX_USAGE = 64
EX_DATAERR = 65
EX_UNAVAILABLE = 69
EX_CONFIG = 78

log = logging.getLogger("unionterm.backoffice")


def _scope(value: str) -> str:
    try:
        return check_scope(value)
    except PayloadError as exc:
        raise argparse.ArgumentTypeError(exc.problem) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unionterm-backoffice", description=__doc__.splitlines()[0])
    parser.add_argument("--home", default="backoffice", help="state folder (default ./backoffice)")
    parser.add_argument("--host", default="127.0.0.1", help="MQTT broker host")
    parser.add_argument("--port", type=int, default=1883, help="MQTT broker port")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="topic prefix")
    parser.add_argument("--username", default="")
    parser.add_argument("--password", default="")
    parser.add_argument("--verbose", action="store_true", help="log each step")
    sub = parser.add_subparsers(dest="command", required=True)

    keys = sub.add_parser("keys", help="list-signing keys").add_subparsers(dest="action", required=True)
    gen = keys.add_parser("generate", help="make a new key pair (current if it is the first)")
    gen.add_argument("--use", action="store_true", help="sign with the new key from now on")
    use = keys.add_parser("use", help="sign with this key from now on (after terminals trust it)")
    use.add_argument("kid")
    keys.add_parser("list", help="show the keys and which one signs")

    members = sub.add_parser("members", help="the member list").add_subparsers(dest="action", required=True)
    mgen = members.add_parser("generate", help="replace the members with a synthetic list")
    mgen.add_argument("--count", type=int, required=True)
    mgen.add_argument("--seed", type=int, default=1)
    mimp = members.add_parser("import", help="add or replace members from a CSV file (all or nothing)")
    mimp.add_argument("file")
    mimp.add_argument("--replace", action="store_true", help="the file is the whole member list")
    diff = members.add_parser("diff", help="compare terminals' reports with what was published")
    diff.add_argument("--listen", type=float, default=3.0, help="seconds to collect fresh reports (0: none)")

    publish = sub.add_parser("publish", help="send a list to the terminals")
    publish.add_argument("what", choices=["snapshot", "delta", "hotlist"])
    publish.add_argument("--scope", type=_scope, default="all", help="all, org-<id> or group-<id>")
    publish.add_argument("--ttl-days", type=float, default=7.0, help="validity of the signed list")
    publish.add_argument("--chunk-kb", type=int, default=256, help="largest chunk in KiB")

    block = sub.add_parser("block", help="hot-list a card (or release it)")
    block.add_argument("card", help="card id as in the CSV card_id column, or a 64-hex card ref with --ref")
    block.add_argument("--kind", choices=KINDS, default="union")
    block.add_argument("--ref", action="store_true", help="CARD is already a card ref")
    block.add_argument("--reason", default=None, help="lost (default), stolen ...; found to release")
    block.add_argument("--release", action="store_true", help="take the card off the hot list")

    serve = sub.add_parser("serve", help="keep terminal reports and answer resync requests")
    serve.add_argument("--duration", type=float, default=None, help="seconds (default: until stopped)")

    tx = sub.add_parser("tx", help="transaction intake (simulator.backoffice.txconsume)", add_help=False)
    tx.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _broker(args: argparse.Namespace) -> BrokerSettings:
    return BrokerSettings(args.host, args.port, args.prefix, args.username, args.password)


async def _with_office(args: argparse.Namespace, home: BackOfficeHome,
                       act: Callable[[BackOffice], Awaitable[int]]) -> int:
    ttl = int(getattr(args, "ttl_days", 7.0) * DAY)
    chunk = getattr(args, "chunk_kb", 256) * 1024
    async with _broker(args).client() as client:
        return await act(BackOffice(home, client, args.prefix, ttl_s=ttl, chunk_size=chunk))


def _keys(args: argparse.Namespace, home: BackOfficeHome) -> int:
    if args.action == "generate":
        kid, current = home.generate_key(args.use)
        print(f"key_id={kid} current={'yes' if current else 'no'} public_key={home.public_key_path(kid)}")
    elif args.action == "use":
        home.use_key(args.kid)
        print(f"key_id={args.kid} current=yes")
    else:
        current = home.current_kid()
        for kid in home.key_ids():
            print(f"{kid} {'current' if kid == current else ''}".rstrip())
    return EX_OK


def _members(args: argparse.Namespace, home: BackOfficeHome) -> int:
    if args.action == "generate":
        n = home.replace_members(generate_members(args.count, args.seed, home.card_key()))
        print(f"members={n} seed={args.seed}")
        return EX_OK
    if args.action == "import":
        try:
            records = read_members_csv(args.file, home.card_key())
        except ImportRejected as exc:
            for line, column, problem in exc.errors:
                print(f"{exc.source}: line {line}, column {column}: {problem}", file=sys.stderr)
            print(f"rejected: {len(exc.errors)} error(s); nothing imported", file=sys.stderr)
            return EX_DATAERR
        n = home.replace_members(records) if args.replace else home.upsert_members(records)
        print(f"imported={n} members={home.member_count()}")
        return EX_OK
    return _diff(args, home)


def _diff(args: argparse.Namespace, home: BackOfficeHome) -> int:
    if args.listen > 0:
        asyncio.run(_with_office(args, home, lambda office: office.serve(args.listen, answer=False)))
    rows = diff_reports(home.all_published(), home.hotlist_seq(), home.reports())
    if not rows:
        print("no terminal reports yet")
        return EX_OK
    widths = [max(len(getattr(r, f)) for r in rows) for f in ("terminal", "list", "held")]
    for r in rows:
        print(f"{r.terminal:<{widths[0]}}  {r.list:<{widths[1]}}  {r.held:<{widths[2]}}  "
              f"{r.published:<28}  {r.status}")
    differing = sum(r.status != "ok" for r in rows)
    print(f"terminals={len({r.terminal for r in rows})} lists={len(rows)} differing={differing}")
    return EX_DIFFERS if differing else EX_OK


def _publish(args: argparse.Namespace, home: BackOfficeHome) -> int:
    async def act(office: BackOffice) -> int:
        if args.what == "hotlist":
            print(f"hotlist_full seq={await office.publish_full_hotlist()}")
            return EX_OK
        if args.what == "snapshot":
            pub = await office.publish_snapshot(args.scope)
        else:
            try:
                maybe = await office.publish_delta(args.scope)
            except (PayloadError, ValueError) as exc:
                print(f"cannot publish a delta: {exc}; publish a snapshot instead", file=sys.stderr)
                return EX_DATAERR
            if maybe is None:
                print(f"scope={args.scope} unchanged: nothing to publish")
                return EX_OK
            pub = maybe
        print(f"{args.what} scope={pub.scope} version={pub.version} count={pub.count} "
              f"digest={pub.digest} chunks={pub.chunks}")
        return EX_OK

    return asyncio.run(_with_office(args, home, act))


def _block(args: argparse.Namespace, home: BackOfficeHome) -> int:
    reasons = REMOVE_REASONS if args.release else ADD_REASONS
    reason = args.reason or ("found" if args.release else "lost")
    if reason not in reasons:
        print(f"--reason must be one of {', '.join(sorted(reasons))}", file=sys.stderr)
        return EX_CONFIG
    if args.ref:
        if not HEX64_RE.fullmatch(args.card):
            print("with --ref, CARD must be 64 lowercase hex digits", file=sys.stderr)
            return EX_CONFIG
        ref = args.card
    else:
        try:
            ref = card_ref(home.card_key(), args.kind, parse_card_id(args.kind, args.card, args.card)).hex()
        except PayloadError as exc:
            print(f"card: {exc.problem}", file=sys.stderr)
            return EX_CONFIG
    change = {ref: reason}

    async def act(office: BackOffice) -> int:
        seq = await (office.change_hotlist(remove=change) if args.release else office.change_hotlist(add=change))
        print(f"hotlist seq={seq} {'released' if args.release else 'blocked'} ref={ref} reason={reason}")
        return EX_OK

    return asyncio.run(_with_office(args, home, act))


def _serve(args: argparse.Namespace, home: BackOfficeHome) -> int:
    handled = asyncio.run(_with_office(args, home, lambda office: office.serve(args.duration)))
    print(f"handled={handled}")
    return EX_OK


def _tx(args: argparse.Namespace) -> int:
    """Delegate to the transaction intake, when it is installed."""
    if importlib.util.find_spec("simulator.backoffice.txconsume") is None:
        print("tx: simulator.backoffice.txconsume is not available", file=sys.stderr)
        return EX_USAGE
    from . import txconsume

    return int(txconsume.main(args.args) or 0)


COMMANDS: dict[str, Callable[[argparse.Namespace, BackOfficeHome], int]] = {
    "keys": _keys, "members": _members, "publish": _publish, "block": _block, "serve": _serve,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup("info" if args.verbose else "warning")
    if args.command == "tx":
        return _tx(args)
    home = BackOfficeHome(args.home)
    try:
        return COMMANDS[args.command](args, home)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except (aiomqtt.MqttError, OSError) as exc:
        print(f"broker {args.host}:{args.port} unreachable: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    finally:
        home.close()


if __name__ == "__main__":
    sys.exit(main())
