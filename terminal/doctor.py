"""``unionterm doctor``: is this terminal able to serve, and if not, why, in words a technician can act on.

Each check looks at one thing the terminal depends on and says ``ok``,
``warn`` (works, but will bite: plain MQTT, a certificate about to expire, an
unsynchronised clock) or ``fail`` (members are being, or will be, refused).
Every non-ok line carries a hint naming the fix; docs/install.md explains
each failure at length. The report is printed for the technician or, with
``--json``, handed to the back office; the exit status is non-zero when any
check failed.

The doctor only reads: the journal and the member list are opened
read-only (it may run next to the live service), and the broker check
connects with its own client id, publishes nothing and subscribes to
nothing. (On the production broker, whose client id is the certificate's CN,
the check briefly takes the connection over from a running terminal, which
reconnects on its own within its reconnect delay.)

Reading the PC/SC reader list needs pyscard, which the core must not import,
so the CLI passes a lister from ``drivers/`` in.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import enum
import json
import logging
import os
import socket
import sqlite3
import stat
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from . import signing, tls
from .cardref import load_card_key
from .cards.sam import SoftwareSam
from .config import Config
from .exceptions import ConfigError, UniontermError
from .journal import HeadFile, chain_hash
from .memberfiles import held_list_files, lists_dir_of, stored_digest
from .storage import StorageState, disk_free, probe_directory
from .timesource import CLOCK_FLOOR_S, kernel_synchronised, wall_clock

PCSCD_SOCKET = "/run/pcscd/pcscd.comm"
BROKER_TIMEOUT_S = 5.0
#: A member list not refreshed for this long is suspicious (the back office publishes daily at least).
MEMBERS_STALE_S = 7 * 86400
#: Free space below this many times ``journal.min_free_kb`` is worth a warning.
DISK_WARN_FACTOR = 16
#: How far the clock may lie behind the newest journal record before it counts as set back.
CLOCK_BACK_TOLERANCE_MS = 60_000
#: BCM pins that belong to a bus when that bus is in use (a GPIO output there breaks the bus).
I2C_PINS = {2: "I2C SDA", 3: "I2C SCL"}
SPI_PINS = {7: "SPI CE1", 8: "SPI CE0", 9: "SPI MISO", 10: "SPI MOSI", 11: "SPI SCLK"}
UART_PINS = {14: "UART TXD", 15: "UART RXD"}
UART_PORTS = ("/dev/serial0", "/dev/ttyAMA0", "/dev/ttyS0")

ReaderLister = Callable[[], Awaitable[list[str]]]


class Level(enum.Enum):
    """How bad a finding is: only FAIL makes the doctor exit non-zero."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    level: Level
    summary: str
    hint: str = ""

    def as_json(self) -> dict[str, str]:
        return {"name": self.name, "level": self.level.value, "summary": self.summary, "hint": self.hint}


def ok(name: str, summary: str) -> Check:
    """A passing check (no hint: there is nothing to do)."""
    return Check(name, Level.OK, summary)


def warn(name: str, summary: str, hint: str) -> Check:
    """Works now, will bite later; the hint is mandatory so no finding leaves the technician guessing."""
    return Check(name, Level.WARN, summary, hint)


def fail(name: str, summary: str, hint: str) -> Check:
    """Members are, or will be, refused; the hint says what to do."""
    return Check(name, Level.FAIL, summary, hint)


@dataclass
class Report:
    """Every check, in order, and who was checked."""

    terminal_id: str
    mode: str
    config: str
    checks: list[Check] = field(default_factory=list)

    @property
    def failures(self) -> int:
        return sum(c.level is Level.FAIL for c in self.checks)

    @property
    def warnings(self) -> int:
        return sum(c.level is Level.WARN for c in self.checks)

    @property
    def ok(self) -> bool:
        return self.failures == 0

    def text(self) -> str:
        lines = [f"unionterm doctor: terminal {self.terminal_id} ({self.mode}), config {self.config}"]
        for c in self.checks:
            lines.append(f"  {c.level.value.upper():4}  {c.name:8}  {c.summary}")
            if c.hint:
                lines.append(f"  {'':4}  {'':8}  -> {c.hint}")
        verdict = "FAILED" if self.failures else "ok"
        lines.append(f"result: {verdict} ({self.failures} failed, {self.warnings} warnings)")
        return "\n".join(lines)

    def json(self) -> str:
        return json.dumps({"terminal": self.terminal_id, "mode": self.mode, "config": self.config,
                           "ok": self.ok, "failures": self.failures, "warnings": self.warnings,
                           "checked_at": int(time.time()), "checks": [c.as_json() for c in self.checks]},
                          ensure_ascii=False, indent=2)


# --- pcscd and readers ---------------------------------------------------------------------------


def check_pcscd(socket_path: str = PCSCD_SOCKET) -> Check:
    """Is a pcscd answering on its socket? (Connecting, so a stale socket file does not count.)"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect(socket_path)
        except OSError as exc:
            return fail("pcscd", f"pcscd is not answering on {socket_path} ({exc.strerror or exc})",
                        "apt install pcscd; systemctl enable --now pcscd.socket")
    return ok("pcscd", f"answering on {socket_path}")


def check_readers(cfg: Config, names: list[str] | None) -> Check:
    """The readers the config wants are attached (``names`` is None when pcscd could not be asked)."""
    if names is None:
        return fail("readers", "cannot list readers: pcscd is not running", "fix pcscd first")
    wanted = [n for n in names if cfg.reader.name in n and n != cfg.cards.sam_reader]
    seen = ", ".join(names) or "none"
    if not wanted:
        return fail("readers", f"no card reader matching reader.name {cfg.reader.name!r} (pcscd sees: {seen})",
                    "plug the reader in (pcsc_scan lists it), or correct [reader] name")
    if cfg.cards.sam == "pcsc" and "union-app" in cfg.cards.profiles and cfg.cards.sam_reader not in names:
        return fail("readers", f"SAM reader {cfg.cards.sam_reader!r} not found (pcscd sees: {seen})",
                    "insert the SAM, or correct [cards] sam_reader (the full PC/SC name)")
    return ok("readers", f"{len(wanted)} card reader(s): {', '.join(wanted)}")


# --- keys and TLS -------------------------------------------------------------------------------------


def check_keys(cfg: Config) -> Check:
    """Card-hash key, back-office command keys and SAM keys load as the service loads them."""
    notes = []
    try:
        load_card_key(cfg.config_path(cfg.members.card_key_file))
        trusted = signing.load_trusted(cfg.config_path(p) for p in cfg.commands.public_keys)
        notes.append(f"card key, {len(trusted)} command key(s)")
        if "union-app" in cfg.cards.profiles and cfg.cards.sam == "software":
            sam = SoftwareSam.load(str(cfg.config_path(cfg.cards.sam_key_file)))
            notes.append(f"SAM slots {','.join(map(str, sam.slots))}")
    except UniontermError as exc:
        return fail("keys", str(exc), "re-import the file with unionterm provision (keys are 0600, "
                    "owned by the service user)")
    if not trusted:
        return warn("keys", "; ".join(notes) + ": no back-office command keys, every remote command is refused",
                    "provision with --backoffice-key")
    return ok("keys", "; ".join(notes))


def check_tls(cfg: Config, now: datetime.datetime | None = None) -> Check:
    """The TLS files judged locally, so a bad file is named even when the broker cannot be reached."""
    try:
        material = tls.inspect_material(cfg, now)
    except ConfigError as exc:
        return fail("tls", str(exc), "see docs/install.md, 'doctor: tls'")
    if material is None:
        return warn("tls", "off: the broker link is plain MQTT (readable and forgeable on the network)",
                    "provision with an mqtts:// broker URL and a client certificate")
    if material.certificate is None:
        return warn("tls", "; ".join(material.warnings),
                    "send tls/terminal.csr to the CA, then: unionterm provision --certificate <signed.crt>")
    if material.warnings:
        return warn("tls", "; ".join(material.warnings),
                    "renew: unionterm provision --generate-key, have the CSR signed, install it with --certificate")
    cert = material.certificate
    return ok("tls", f"client certificate CN={cert.subject_cn}, valid until {cert.not_after:%Y-%m-%d}, "
              f"CA {', '.join(material.ca_subjects)}")


# --- the broker --------------------------------------------------------------------------------------

#: Substrings of connection errors, and what they mean on site. First match wins, so the
#: precise TLS alerts come before the generic symptoms they also produce.
BROKER_ERRORS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("key values mismatch", "key_values_mismatch"), "the private key does not belong to the certificate",
     "re-provision the certificate together with its own key"),
    (("certificate_verify_failed", "certificate verify failed"), "the broker's certificate is not trusted",
     "wrong CA file, the broker's host name is not in its certificate, or this terminal's clock is wrong"),
    (("certificate expired",), "the broker rejected this terminal's certificate: expired",
     "request a new certificate (unionterm provision --generate-key)"),
    (("certificate revoked",), "the broker rejected this terminal's certificate: revoked",
     "this terminal was decommissioned or its key reported lost; ask the back office"),
    (("certificate required",), "the broker requires a client certificate and this terminal sent none",
     "unionterm provision --generate-key, have the CSR signed, install it with --certificate"),
    (("unknown ca", "bad certificate", "handshake failure", "certificate unknown",
      "eof occurred in violation of protocol"),
     "the broker rejected this terminal's certificate (expired, revoked, not from its CA, or none)",
     "compare the certificate with the broker's CA and CRL; unionterm doctor's tls line says more"),
    (("name or service not known", "temporary failure in name resolution", "no address associated",
      "nodename nor servname"), "cannot resolve the broker's host name",
     "check [mqtt] host and the terminal's DNS (resolvectl status)"),
    (("connection refused",), "connection refused: nothing listens on that port",
     "check [mqtt] port (8883 for TLS) and that the broker runs"),
    (("network is unreachable", "no route to host"), "no network route to the broker",
     "check the terminal's network (cable, Wi-Fi, default route)"),
    (("wrong_version_number", "wrong version number", "connection reset by peer"),
     "the broker dropped the connection at once: TLS and plain MQTT mixed up?",
     "mqtts:// goes with the broker's TLS port (8883), mqtt:// with the plain one"),
    (("not authori", "bad user name or password"), "the broker refused this identity",
     "the broker's ACL or certificate mapping does not know this terminal id"),
    (("timed out", "timeout"), "no answer from the broker",
     "a firewall drops the traffic, or the host is wrong"),
)
#: The raw error is appended to the explanation, cut to this length.
RAW_ERROR_CHARS = 200


def explain_broker_error(message: str) -> tuple[str, str]:
    """(what went wrong, what to do) for a connection error message; the raw text when unknown."""
    lowered = message.lower()
    for needles, what, hint in BROKER_ERRORS:
        if any(n in lowered for n in needles):
            return what, hint
    return message, "see the broker's log for this terminal's connection attempt"


class _Collect(logging.Handler):
    """Keeps what paho logs while connecting: a TLS alert from the broker shows up nowhere else."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _probe(cfg: Config, timeout: float) -> str:
    """Connect and disconnect once (blocking; run in a thread); "" on CONNACK success, else what went wrong.

    paho directly rather than aiomqtt: aiomqtt waits for a CONNACK without
    limit and does not report a connection the broker drops during the TLS
    handshake, which is exactly how a rejected certificate looks.
    """
    m = cfg.mqtt
    collect = _Collect()
    logger = logging.getLogger("unionterm.doctor.mqtt")
    logger.propagate = False
    logger.addHandler(collect)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{m.client_id or 'unionterm-' + cfg.terminal.id}-doctor")
    client.enable_logger(logger)
    if m.username:
        client.username_pw_set(m.username, m.password or None)
    params = tls.tls_params(cfg)
    if params is not None:  # the same parameters the uplink hands to aiomqtt (which hands them to paho)
        client.tls_set(ca_certs=params.ca_certs, certfile=params.certfile, keyfile=params.keyfile,
                       cert_reqs=params.cert_reqs, tls_version=params.tls_version)
    settled = threading.Event()
    outcome: list[str] = []

    def on_connect(_c: object, _u: object, _f: object, code: Any, _p: object) -> None:
        outcome.append("" if not code.is_failure else f"broker refused the connection: {code}")
        settled.set()

    def on_disconnect(_c: object, _u: object, _f: object, code: Any, _p: object) -> None:
        outcome.append(f"disconnected before CONNACK: {code}")
        settled.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_connect_fail = lambda _c, _u: settled.set()
    try:
        client.connect(m.host, m.port, keepalive=max(5, int(timeout)))
        client.loop_start()
        try:
            settled.wait(timeout)
        finally:
            client.disconnect()
            client.loop_stop()
    finally:
        logger.removeHandler(collect)
    if outcome and outcome[0] == "":
        return ""
    return " | ".join(outcome + collect.messages) or "timed out waiting for the broker"


async def check_broker(cfg: Config, timeout: float = BROKER_TIMEOUT_S) -> Check:
    """Connect with the uplink's host, port and TLS parameters; a CONNACK success is ok."""
    m = cfg.mqtt
    where = f"{m.host}:{m.port}"
    secure = "TLS" if cfg.tls.ca_file else "plain"
    started = time.monotonic()
    try:
        problem = await asyncio.to_thread(_probe, cfg, timeout)
    except (OSError, ValueError) as exc:  # resolution, refusal and local TLS errors come out of connect()
        problem = str(exc) or type(exc).__name__
    if problem:
        what, hint = explain_broker_error(problem)
        raw = problem if len(problem) <= RAW_ERROR_CHARS else problem[:RAW_ERROR_CHARS - 3] + "..."
        return fail("broker", f"{where} ({secure}): {what}" + (f" [{raw}]" if what != problem else ""), hint)
    ms = (time.monotonic() - started) * 1000
    return ok("broker", f"connected to {where} ({secure}) in {ms:.0f} ms")


# --- clock ---------------------------------------------------------------------------------------------


def check_clock(clock: Callable[[], tuple[int, bool]], synchronised: bool | None,
                last_record_ms: int = 0) -> Check:
    """The wall clock is plausible, synchronised, and not behind what the journal already wrote."""
    now_ms, _trusted = clock()
    shown = datetime.datetime.fromtimestamp(now_ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    if now_ms < CLOCK_FLOOR_S * 1000:
        return fail("clock", f"{shown} is before this build's era: the clock was never set",
                    "connect the network so NTP can set it (timedatectl), or fit an RTC")
    if last_record_ms and now_ms + CLOCK_BACK_TOLERANCE_MS < last_record_ms:
        behind = (last_record_ms - now_ms) / 1000
        return fail("clock", f"{shown} is {behind:.0f} s behind the newest journal record",
                    "the clock was set back (flat RTC battery, manual change); fix NTP before serving")
    if synchronised is False:
        return warn("clock", f"{shown}, NOT synchronised (transactions are flagged clock_ok=false)",
                    "check NTP: timedatectl timesync-status; the broker must be reachable for the time server too")
    state = "synchronised" if synchronised else "synchronisation unknown"
    return ok("clock", f"{shown}, {state}")


# --- member list --------------------------------------------------------------------------------------


def _ro(path: Path) -> sqlite3.Connection:
    """Read-only: a doctor running as root must never create a file the service then cannot open."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


@dataclass(frozen=True)
class HeldListFile:
    """One synced member list as found on disk (read-only view of the store's layout)."""

    scope: str
    version: int
    count: int
    applied_at: int
    expires: int


def _quick_check(conn: sqlite3.Connection) -> str:
    verdict = conn.execute("PRAGMA quick_check").fetchone()[0]
    orphans = conn.execute("SELECT count(*) FROM cards WHERE member_id NOT IN (SELECT id FROM members)").fetchone()[0]
    if verdict != "ok":
        return f"damaged ({verdict})"
    return f"{orphans} card(s) point at no member" if orphans else ""


def _check_list_file(scope: str, path: Path) -> tuple[HeldListFile | None, str]:
    """The list's own integrity: the file, then its content against the digest the back office signed."""
    if not path.is_file():
        return None, f"list {scope}: its pointer names {path.name}, which is missing"
    with contextlib.closing(_ro(path)) as conn:
        damage = _quick_check(conn)
        if damage:
            return None, f"list {scope}: {damage}"
        row = conn.execute("SELECT version, count, digest, applied_at, expires FROM list_meta").fetchone()
        if row is None:
            return None, f"list {scope}: no version record"
        version, count, digest, applied_at, expires = row
        if stored_digest(conn) != (count, digest):
            return None, f"list {scope} v{version}: content does not match the digest the back office signed"
    return HeldListFile(scope, version, count, applied_at, expires), ""


def check_members(cfg: Config, now: float) -> Check:
    """Every member list opens, is intact (content = signed digest), is not empty and is current.

    Everything is opened read-only: the doctor runs as root next to the live
    service, and a file created by root (a WAL) would lock the service out.
    Recomputing a digest reads the whole list (seconds at 1.1M members).
    """
    home = cfg.state_path(cfg.members.db)
    resync = "stop the terminal and delete the member files in the state folder: the lists download again"
    if not home.exists():
        return warn("members", f"no member list yet ({home}): every card is refused until the first sync",
                    "start the terminal with the broker reachable; the back office sends the lists")
    try:
        with contextlib.closing(_ro(home)) as conn:
            damage = _quick_check(conn)
            local = conn.execute("SELECT count(*) FROM members").fetchone()[0]
            hot = conn.execute("SELECT count(*) FROM hotlist").fetchone()[0]
        if damage:
            return fail("members", f"member store {home.name}: {damage}", resync)
        held = []
        for scope, path in held_list_files(lists_dir_of(home)).items():
            found, problem = _check_list_file(scope, path)
            if problem:
                return fail("members", problem, resync)
            held.append(found)
    except (sqlite3.Error, OSError) as exc:
        return fail("members", f"member store unreadable: {exc}", resync)
    parts = [f"{h.scope} v{h.version} ({h.count} members, applied {max(0, now - h.applied_at) / 3600:.1f} h ago)"
             for h in held if h is not None]
    parts += [f"local {local}"] if local else []
    summary = "; ".join(parts + [f"{hot} cards blocked"])
    if not local and not any(h.count for h in held if h is not None):
        return warn("members", "member lists are empty: every card is refused", "check the sync with the back office")
    stale = [h for h in held if h is not None and ((h.expires and now >= h.expires)
                                                   or now - h.applied_at > MEMBERS_STALE_S)]
    if stale:
        return warn("members", summary + f"; stale: {', '.join(h.scope for h in stale)}",
                    "check the member sync: broker reachable, back office publishing")
    return ok("members", summary)


# --- journal -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainReport:
    """What walking the journal's hash chain found."""

    records: int
    first_seq: int
    last_seq: int
    last_hash: str
    last_ms: int
    acked: int
    problem: str = ""


def verify_chain(path: Path) -> ChainReport:
    """Recompute every link of the journal's chain from the stored bodies (read-only).

    Pruning removes the oldest acknowledged rows, so the first row's own link
    cannot be checked; every later row must follow its predecessor with no
    gap, carry its predecessor's hash, and hash to what is stored.
    """
    records, first, prev_seq, prev_hash, last_ms, problem = 0, 0, 0, "", 0, ""
    with contextlib.closing(_ro(path)) as conn:
        meta = dict(conn.execute("SELECT k, v FROM meta").fetchall())
        for seq, body, digest, at_ms in conn.execute("SELECT seq, body, hash, at_ms FROM tx ORDER BY seq"):
            fields = json.loads(body)
            link = fields.get("prev_hash", "")
            if fields.get("seq") != seq:
                problem = f"record {seq} claims to be {fields.get('seq')}"
            elif chain_hash(link, body) != digest:
                problem = f"record {seq} was altered (its hash does not match its content)"
            elif records and seq != prev_seq + 1:
                problem = f"records {prev_seq + 1}..{seq - 1} are missing"
            elif records and link != prev_hash:
                problem = f"record {seq} does not link to record {prev_seq}"
            if problem:
                break
            records, prev_seq, prev_hash, last_ms = records + 1, seq, digest, int(at_ms)
            first = first or seq
    return ChainReport(records, first, prev_seq, prev_hash, last_ms, int(meta.get("acked", 0)), problem)


def check_journal(cfg: Config) -> tuple[Check, int]:
    """The chain is intact and nothing committed is missing at the end; also returns the newest record's time."""
    path = cfg.state_path(cfg.journal.db)
    if not path.exists():
        return ok("journal", "no journal yet (created at the first start)"), 0
    hint = "keep the file for the back office (it proves what happened); then ask them how to continue"
    try:
        chain = verify_chain(path)
    except (sqlite3.Error, ValueError) as exc:
        return fail("journal", f"journal unreadable: {exc}", hint), 0
    if chain.problem:
        return fail("journal", f"hash chain broken: {chain.problem}", hint), chain.last_ms
    head = HeadFile(Path(f"{path}.head")).read()
    if head is not None and head.terminal == cfg.terminal.id:
        if head.seq > chain.last_seq or (head.seq == chain.last_seq and head.hash != chain.last_hash):
            return fail("journal", f"committed records are gone: the journal ends at {chain.last_seq}, "
                        f"its head file says {head.seq}", hint), chain.last_ms
    unacked = chain.last_seq - min(chain.acked, chain.last_seq)
    span = f"records {chain.first_seq}..{chain.last_seq}" if chain.records else "no records"
    return ok("journal", f"{span}, chain intact, {unacked} not yet acknowledged"), chain.last_ms


# --- disk and GPIO ------------------------------------------------------------------------------------


def check_disk(cfg: Config) -> Check:
    """The state folder exists, takes a real write, and has room above the journal's reserve."""
    state = Path(cfg.terminal.state_dir)
    if not state.is_dir():
        return fail("disk", f"state folder {state} does not exist", "run unionterm provision (it creates it)")
    probe = probe_directory(state)
    if probe is not StorageState.OK:
        return fail("disk", f"state folder {state} is not writable: {probe.value}",
                    "a read-only SD card is failing: replace it; or fix ownership (chown unionterm)")
    free = disk_free(state)
    floor = cfg.journal.min_free_kb * 1024
    shown = f"{free / 2**20:.0f} MiB free in {state}"
    if free < floor:
        return fail("disk", shown + f", below journal.min_free_kb ({cfg.journal.min_free_kb} KiB): value is refused",
                    "free space (old logs: journalctl --vacuum-size=50M) or fit a bigger card")
    if free < floor * DISK_WARN_FACTOR:
        return warn("disk", shown + ", getting low", "free space before the journal has to refuse value")
    return ok("disk", shown)


def _pin_owners(cfg: Config) -> dict[int, str]:
    g = cfg.gpio
    owners = {g.relay_pin: "relay", g.green_led_pin: "green LED", g.red_led_pin: "red LED", g.buzzer_pin: "buzzer"}
    if g.door_contact_pin is not None:
        owners[g.door_contact_pin] = "door contact"
    if g.exit_button_pin is not None:
        owners[g.exit_button_pin] = "exit button"
    if cfg.keypad.driver != "none":
        owners.update({p: f"keypad row {i + 1}" for i, p in enumerate(cfg.keypad.row_pins)})
        owners.update({p: f"keypad column {i + 1}" for i, p in enumerate(cfg.keypad.column_pins)})
    return owners


def _device_problem(path: str) -> str:
    if not os.path.exists(path):
        return f"{path} missing"
    if not os.access(path, os.R_OK | os.W_OK):
        mode = stat.S_IMODE(os.stat(path).st_mode)
        return f"{path} not readable and writable by this user (mode {mode:04o})"
    return ""


def check_gpio(cfg: Config, dev: str = "/dev") -> Check:
    """Pins do not sit on a bus the terminal uses, and the device nodes are there and accessible."""
    owners = _pin_owners(cfg)
    buses = dict(I2C_PINS) if cfg.display.driver == "luma" and cfg.display.interface == "i2c" else {}
    if cfg.display.driver == "luma" and cfg.display.interface == "spi":
        buses.update(SPI_PINS)
        for pin, what in ((cfg.display.spi_dc_pin, "display D/C"), (cfg.display.spi_reset_pin, "display reset")):
            if pin in owners:
                return fail("gpio", f"GPIO{pin} is both {owners[pin]} and {what}", "move one of them in terminal.toml")
    if any(port.port in UART_PORTS for port in cfg.serial.values()):
        buses.update(UART_PINS)
    clashes = [f"GPIO{p} ({owners[p]}) is {bus}" for p, bus in buses.items() if p in owners]
    if clashes:
        return fail("gpio", "; ".join(clashes), "move the pin in terminal.toml and rewire (docs/install.md, Wiring)")
    pins = ", ".join(f"{name} {pin}" for pin, name in sorted(owners.items(), key=lambda kv: kv[1]))
    if cfg.gpio.driver == "mock":
        return ok("gpio", f"simulated pins (MockFactory): {pins}")
    problems = [p for p in (_device_problem(f"{dev}/gpiochip0"),) if p]
    if cfg.display.driver == "luma":
        node = (f"{dev}/i2c-{cfg.display.i2c_port}" if cfg.display.interface == "i2c"
                else f"{dev}/spidev{cfg.display.spi_port}.{cfg.display.spi_device}")
        problems += [p for p in (_device_problem(node),) if p]
    if problems:
        return fail("gpio", "; ".join(problems),
                    "enable the interface (raspi-config nonint do_i2c 0 / do_spi 0) and put the service user "
                    "in the gpio, i2c and spi groups")
    return ok("gpio", pins)


# --- all of it ----------------------------------------------------------------------------------------


async def run_doctor(cfg: Config, readers: ReaderLister | None = None, *,
                     clock: Callable[[], tuple[int, bool]] = wall_clock,
                     synchronised: Callable[[], bool | None] = kernel_synchronised,
                     pcscd_socket: str = PCSCD_SOCKET, broker_timeout: float = BROKER_TIMEOUT_S) -> Report:
    """Every check, in the order a technician would fix things."""
    report = Report(cfg.terminal.id, cfg.terminal.mode, cfg.source)
    report.checks.append(ok("config", "valid"))
    pcscd = check_pcscd(pcscd_socket)
    names = await readers() if readers is not None and pcscd.level is Level.OK else None
    journal, last_ms = check_journal(cfg)
    now_ms, _ = clock()
    now = datetime.datetime.fromtimestamp(now_ms / 1000, datetime.timezone.utc)
    report.checks += [
        pcscd,
        check_readers(cfg, names),
        check_keys(cfg),
        check_tls(cfg, now),
        await check_broker(cfg, broker_timeout),
        check_clock(clock, synchronised(), last_ms),
        check_members(cfg, now_ms / 1000),
        journal,
        check_disk(cfg),
        check_gpio(cfg),
    ]
    return report


def config_failure(path: str, problem: str) -> Report:
    """The report when the config itself does not load (nothing else can be checked)."""
    report = Report("?", "?", path)
    report.checks.append(fail("config", problem, "unionterm check-config names the key; fix it or re-provision"))
    return report
