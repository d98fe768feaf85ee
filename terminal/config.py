"""The terminal's one TOML file, as typed and validated objects.

A terminal that starts with a wrong config hands out nothing or opens the
wrong door, so the whole file is checked at start: every error names the
file, the dotted key and what is wrong, and ``unionterm check-config`` exits
78 (EX_CONFIG) with that message.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .configschema import bounded, load_section
from .exceptions import ConfigError
# [modes] the rules' own config dataclasses are the schema of [clock], [pos], [venue], [canteen], [door]
from .rules.canteen import CanteenConfig
from .rules.clock import ClockPolicy
from .rules.door import DoorConfig
from .rules.pos import PosConfig
from .rules.venue import VenueConfig

DEFAULT_PATH = "/etc/unionterm/terminal.toml"

Mode = Literal["access", "pos", "canteen"]


@dataclass(frozen=True)
class TerminalSection:
    """Who this terminal is and where it keeps its state."""

    id: str
    mode: Mode
    site: str = ""
    state_dir: str = "/var/lib/unionterm"
    language: Literal["zh", "en"] = "zh"
    log_level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True)
class ReaderSection:
    """The PC/SC reader; ``name`` is a substring of the reader name, empty = first."""

    driver: Literal["pcsc"] = "pcsc"
    name: str = ""
    reconnect_s: float = bounded(1.0, 0.05, 60.0)


@dataclass(frozen=True)
class GpioSection:
    """BCM pin numbers. ``mock`` runs gpiozero's MockFactory (simulator)."""

    driver: Literal["gpiozero", "mock"] = "gpiozero"
    relay_pin: int = bounded(17, 0, 27)
    relay_active_high: bool = True
    green_led_pin: int = bounded(27, 0, 27)
    red_led_pin: int = bounded(22, 0, 27)
    buzzer_pin: int = bounded(23, 0, 27)
    door_contact_pin: int | None = bounded(None, 0, 27)
    exit_button_pin: int | None = bounded(None, 0, 27)


@dataclass(frozen=True)
class DisplaySection:
    """The OLED. ``dummy`` is luma's in-memory twin; ``capture_dir`` saves PNGs."""

    driver: Literal["luma", "dummy", "none"] = "luma"
    controller: Literal["ssd1306", "sh1106"] = "ssd1306"
    interface: Literal["i2c", "spi"] = "i2c"
    i2c_port: int = bounded(1, 0, 10)
    i2c_address: int = bounded(0x3C, 0x03, 0x77)
    spi_port: int = bounded(0, 0, 1)
    spi_device: int = bounded(0, 0, 1)
    spi_dc_pin: int = bounded(24, 0, 27)
    spi_reset_pin: int = bounded(25, 0, 27)
    width: int = bounded(128, 32, 256)
    height: int = bounded(64, 16, 128)
    rotate: int = bounded(0, 0, 3)
    capture_dir: str = ""
    idle_text: str = ""


@dataclass(frozen=True)
class SerialPortSection:
    """One serial device (cash register link, QR scanner)."""

    port: str
    baudrate: int = bounded(9600, 1200, 921600)


@dataclass(frozen=True)
class MqttSection:
    """The back-office broker."""

    host: str = "127.0.0.1"
    port: int = bounded(1883, 1, 65535)
    topic_prefix: str = "unionterm/v1"
    keepalive_s: int = bounded(30, 5, 3600)
    client_id: str = ""
    username: str = ""
    password: str = ""
    reconnect_min_s: float = bounded(0.5, 0.05, 60.0)
    reconnect_max_s: float = bounded(30.0, 0.1, 3600.0)
    inflight: int = bounded(20, 1, 1000)


@dataclass(frozen=True)
class MembersSection:
    """The local member list and the deployment key that hashes card ids."""

    db: str = "members.db"
    card_key_file: str = "card.key"


@dataclass(frozen=True)
class JournalSection:
    """The durable transaction journal (its own database file).

    ``capacity`` bounds the rows kept; ``warn_at`` (0 = 80 % of capacity)
    raises a warning on screen and in telemetry long before it is reached.
    At capacity, ``refuse_value`` keeps every row until retention frees it and
    refuses value-granting taps meanwhile; ``drop_acked`` deletes the oldest
    rows the back office has acknowledged instead. Unacknowledged rows are
    never dropped. Below ``min_free_kb`` of free disk, value is refused so the
    last space is kept for the records that must still be written.
    """

    db: str = "journal.db"
    capacity: int = bounded(500_000, 100, 100_000_000)
    warn_at: int = bounded(0, 0, 100_000_000)
    full_policy: Literal["refuse_value", "drop_acked"] = "refuse_value"
    retention_days: int = bounded(90, 1, 3650)
    min_free_kb: int = bounded(1024, 0, 10_485_760)
    probe_s: float = bounded(2.0, 0.05, 600.0)


@dataclass(frozen=True)
class UplinkSection:
    """Back-office acknowledgements: how far ahead of them the terminal may run.

    ``unacked_window`` bounds records sent but not yet acknowledged by the back
    office (keep it below the broker's queue for an offline back office,
    mosquitto's ``max_queued_messages`` is 1000 by default); after
    ``ack_timeout_s`` without progress the unacknowledged records are sent again.
    """

    unacked_window: int = bounded(500, 1, 100_000)
    ack_timeout_s: float = bounded(30.0, 0.2, 3600.0)
    batch: int = bounded(50, 1, 1000)


@dataclass(frozen=True)
class TelemetrySection:
    """Periodic health report on ``t/{id}/telemetry``."""

    interval_s: float = bounded(60.0, 0.2, 86400.0)


@dataclass(frozen=True)
class CommandsSection:
    """Signed remote commands: the back office's command keys (current and next).

    Files are one line of hex each, resolved against the config's folder; with
    none, every command is refused. ``max_ttl_s`` is the longest validity a
    command may claim, which also bounds how long seen nonces are kept.
    """

    public_keys: tuple[str, ...] = ()
    max_ttl_s: int = bounded(3600, 10, 7 * 86400)
    max_bytes: int = bounded(8192, 512, 65536)


@dataclass(frozen=True)
class SimulatorSection:
    """Test-only hooks; never set on a real terminal.

    ``tap_fifo`` names a FIFO from which hex UIDs (one per line) are served as
    if read from a UID card, so a whole process can be driven quickly.
    """

    tap_fifo: str = ""


@dataclass(frozen=True)
class CardsSection:
    """Which card profiles this terminal accepts, and where their secrets live.

    ``uid-legacy`` is off by default: a UID is copied onto a blank card for a
    few yuan, so only sites that still run old badges turn it on (and their
    transactions are journaled as weak). ``sam`` says where the union master
    keys are: ``software`` reads ``sam_key_file`` (mode 0600, next to this
    config), ``pcsc`` asks the SAM card in the reader named ``sam_reader`` (the
    full PC/SC name, e.g. ``"... 00 01"``; keep it out of ``reader.name``, or
    the SAM would be taken for a tap). ``union_aid`` is the 3-byte DESFire AID
    in hex. ``qr-ecard`` needs ``qr_scanner`` (the name of a ``[serial.<name>]``
    port) and ``qr_public_keys`` (issuer key files, one line of hex each,
    current and next).
    """

    profiles: tuple[Literal["union-app", "bank-pan", "qr-ecard", "uid-legacy"], ...] = ("union-app", "bank-pan")
    sam: Literal["software", "pcsc"] = "software"
    sam_key_file: str = "sam.keys"
    sam_reader: str = ""
    union_aid: str = "554E49"
    qr_scanner: str = ""
    qr_public_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class KeypadSection:
    """The technician's keypad: a row/column matrix on GPIO (BCM pins), see docs/install.md.

    ``keys`` gives the legends row by row (len = rows x columns). Scanning is
    cheap polling (``scan_ms``) because a membrane keypad bounces for a few
    milliseconds and edge interrupts would report every bounce. An idle
    service session ends after ``service_timeout_s`` so a technician who walks
    away does not leave the test menu open at a counter.
    """

    driver: Literal["none", "matrix"] = "none"
    row_pins: tuple[int, ...] = (12, 16, 20, 21)
    column_pins: tuple[int, ...] = (13, 19, 26, 4)
    keys: str = "123A456B789C*0#D"
    scan_ms: int = bounded(20, 5, 200)
    service_timeout_s: float = bounded(60.0, 1.0, 3600.0)


@dataclass(frozen=True)
class TlsSection:
    """TLS to the broker with this terminal's own client certificate (off while ``ca_file`` is empty).

    Files resolve against the config's folder. The broker maps the
    certificate's CN to the MQTT username, so the certificate is the
    terminal's identity and the key must be readable by the service alone.
    """

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""


@dataclass(frozen=True)
class AccessSection:
    """Door mode: how long the relay is energised for a granted card."""

    pulse_ms: int = bounded(3000, 100, 60000)


@dataclass(frozen=True)
class StalenessSection:
    """Per mode: how old (seconds since the back office issued it) the member list may be
    before value-granting decisions stop with ``list_stale``; 0 = no limit. Doors keep
    opening on an old list by default (people must get in and out), hot list honoured."""

    pos: int = bounded(3 * 86400, 0, 366 * 86400)
    canteen: int = bounded(3 * 86400, 0, 366 * 86400)
    access: int = bounded(0, 0, 366 * 86400)


@dataclass(frozen=True)
class SyncSection:
    """Member-list sync (docs/protocol-members.md): the scopes this terminal serves, in look-up
    order, and the back office's list-signing public keys (current and next, files resolved
    against the config's folder). With no key, no list is synced."""

    scopes: tuple[str, ...] = ("all",)
    trusted_keys: tuple[str, ...] = ()
    resync_retry_s: float = bounded(300.0, 1.0, 86400.0)
    max_age_s: StalenessSection = field(default_factory=StalenessSection)


@dataclass(frozen=True)
class Config:
    """The whole terminal configuration; ``source`` is the file it came from."""

    terminal: TerminalSection
    reader: ReaderSection = field(default_factory=ReaderSection)
    gpio: GpioSection = field(default_factory=GpioSection)
    display: DisplaySection = field(default_factory=DisplaySection)
    mqtt: MqttSection = field(default_factory=MqttSection)
    members: MembersSection = field(default_factory=MembersSection)
    journal: JournalSection = field(default_factory=JournalSection)
    access: AccessSection = field(default_factory=AccessSection)
    serial: dict[str, SerialPortSection] = field(default_factory=dict)
    uplink: UplinkSection = field(default_factory=UplinkSection)
    telemetry: TelemetrySection = field(default_factory=TelemetrySection)
    commands: CommandsSection = field(default_factory=CommandsSection)
    simulator: SimulatorSection = field(default_factory=SimulatorSection)
    cards: CardsSection = field(default_factory=CardsSection)
    keypad: KeypadSection = field(default_factory=KeypadSection)
    tls: TlsSection = field(default_factory=TlsSection)
    sync: SyncSection = field(default_factory=SyncSection)
    # [modes] trusted-time policy and each mode's rules (terminal/modes/, docs/modes.md)
    clock: ClockPolicy = field(default_factory=ClockPolicy)
    pos: PosConfig | None = None
    venue: VenueConfig | None = None
    canteen: CanteenConfig | None = None
    door: DoorConfig | None = None
    source: str = ""

    def state_path(self, name: str) -> Path:
        """Resolve a state file name against ``terminal.state_dir``."""
        return Path(self.terminal.state_dir, name)

    def config_path(self, name: str) -> Path:
        """Resolve a file named in the config against the config's folder."""
        return Path(os.path.dirname(self.source) or ".", name)


def parse(text: str, path: str) -> Config:
    """Validate TOML ``text``; ``path`` is only used to name the file in errors."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise ConfigError(path, None, f"not valid TOML: {_deep_nesting(text)}arrays or inline tables "
                          "nested too deeply") from None
    except ValueError as exc:  # int()'s 4300-digit limit, which tomllib lets through without a position
        raise ConfigError(path, None, f"not valid TOML: {_long_number(text)}{exc}") from None
    if "source" in table:
        raise ConfigError(path, "source", "unknown key")
    cfg: Config = load_section(Config, table, path)
    object.__setattr__(cfg, "source", path)
    _cross_check(cfg, path)
    return cfg


# tomllib names the line of a syntax error, but not of these two: find it for the message.
_LONG_NUMBER_RE = re.compile(r"[0-9][0-9_]{4299,}")
#: No config nests anywhere near this deep; tomllib gives up a few hundred levels down.
_DEEP = 100


def _long_number(text: str) -> str:
    """``line N: `` of the first number too long for Python's int()."""
    match = _LONG_NUMBER_RE.search(text)
    return f"line {text.count(chr(10), 0, match.start()) + 1}: " if match else ""


def _deep_nesting(text: str) -> str:
    """``line N: `` where brackets first nest past :data:`_DEEP` (counted naively: only a pointer)."""
    depth = 0
    for number, line in enumerate(text.split("\n"), start=1):
        for ch in line:
            if ch in "[{":
                depth += 1
                if depth > _DEEP:
                    return f"line {number}: "
            elif ch in "]}":
                depth = max(depth - 1, 0)
    return ""


def load(path: str | os.PathLike[str] = DEFAULT_PATH) -> Config:
    """Read and validate the config file at ``path``."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise ConfigError(name, None, "file not found") from None
    except IsADirectoryError:
        raise ConfigError(name, None, "is a directory, not a config file") from None
    except PermissionError:
        raise ConfigError(name, None, "permission denied") from None
    except OSError as exc:  # a file where a folder should be, a name too long, a symlink loop, I/O error
        raise ConfigError(name, None, f"cannot be read: {exc.strerror or exc}") from None
    except ValueError:  # open() refuses a name with a NUL byte before the system sees it
        raise ConfigError(name, None, "is not a usable file name (it contains a NUL byte)") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(name, None, f"not UTF-8 text (byte {exc.start})") from None
    return parse(text, name)


def _cross_check(cfg: Config, path: str) -> None:
    pins = {
        "gpio.relay_pin": cfg.gpio.relay_pin,
        "gpio.green_led_pin": cfg.gpio.green_led_pin,
        "gpio.red_led_pin": cfg.gpio.red_led_pin,
        "gpio.buzzer_pin": cfg.gpio.buzzer_pin,
        "gpio.door_contact_pin": cfg.gpio.door_contact_pin,
        "gpio.exit_button_pin": cfg.gpio.exit_button_pin,
    }
    seen: dict[int, str] = {}
    for key, pin in pins.items():
        if pin is None:
            continue
        if pin in seen:
            raise ConfigError(path, key, f"pin {pin} is already used by {seen[pin]}")
        seen[pin] = key
    if not cfg.terminal.id.strip() or any(c in cfg.terminal.id for c in "/+#"):
        raise ConfigError(path, "terminal.id", "must be non-empty and contain no '/', '+' or '#'")
    if cfg.mqtt.reconnect_min_s > cfg.mqtt.reconnect_max_s:
        raise ConfigError(path, "mqtt.reconnect_min_s", "must not exceed mqtt.reconnect_max_s")
    if cfg.journal.warn_at > cfg.journal.capacity:
        raise ConfigError(path, "journal.warn_at", "must not exceed journal.capacity")
    _check_cards(cfg, path)
    _check_keypad(cfg, pins, path)
    _check_tls(cfg, path)
    _check_sync(cfg, path)
    _check_modes(cfg, path)


def _check_cards(cfg: Config, path: str) -> None:
    """[cards] keys that only make sense together."""
    cards = cfg.cards
    if not cards.profiles:
        raise ConfigError(path, "cards.profiles", "must allow at least one card profile")
    try:
        aid_ok = len(bytes.fromhex(cards.union_aid)) == 3
    except ValueError:
        aid_ok = False
    if not aid_ok:
        raise ConfigError(path, "cards.union_aid", "must be 3 bytes in hex (6 hex digits)")
    if "union-app" in cards.profiles and cards.sam == "pcsc" and not cards.sam_reader:
        raise ConfigError(path, "cards.sam_reader", "is required when cards.sam is 'pcsc'")
    if "qr-ecard" in cards.profiles:
        if cards.qr_scanner not in cfg.serial:
            raise ConfigError(path, "cards.qr_scanner",
                              f"must name a [serial.<name>] port for qr-ecard, got {cards.qr_scanner!r}")
        if not cards.qr_public_keys:
            raise ConfigError(path, "cards.qr_public_keys", "at least one issuer key file is needed for qr-ecard")


def _check_keypad(cfg: Config, gpio_pins: dict[str, int | None], path: str) -> None:
    """[keypad]: a legend per key, and pins that are real and not wired to anything else."""
    pad = cfg.keypad
    if pad.driver == "none":
        return
    rows, cols = pad.row_pins, pad.column_pins
    if not rows or not cols:
        raise ConfigError(path, "keypad.row_pins", "a matrix keypad needs at least one row and one column pin")
    if len(pad.keys) != len(rows) * len(cols) or len(set(pad.keys)) != len(pad.keys):
        raise ConfigError(path, "keypad.keys",
                          f"must give {len(rows) * len(cols)} distinct legends (rows x columns), got {pad.keys!r}")
    taken = {pin: key for key, pin in gpio_pins.items() if pin is not None}
    for key, pins in (("keypad.row_pins", rows), ("keypad.column_pins", cols)):
        for pin in pins:
            if not 0 <= pin <= 27:
                raise ConfigError(path, key, f"pin {pin} is not a BCM GPIO number (0..27)")
            if pin in taken:
                raise ConfigError(path, key, f"pin {pin} is already used by {taken[pin]}")
            taken[pin] = key


def _check_tls(cfg: Config, path: str) -> None:
    """[tls]: a client certificate needs its key, and both need the CA that checks the broker."""
    tls = cfg.tls
    if bool(tls.cert_file) != bool(tls.key_file):
        raise ConfigError(path, "tls.key_file" if tls.cert_file else "tls.cert_file",
                          "cert_file and key_file go together (the terminal's client certificate and its key)")
    if tls.cert_file and not tls.ca_file:
        raise ConfigError(path, "tls.ca_file", "is required with a client certificate (it authenticates the broker)")


def _check_sync(cfg: Config, path: str) -> None:
    """[sync]: scopes that are one topic level each, listed once; at most two keys."""
    from .sync.topics import SCOPE_RE  # the one scope rule, shared with the protocol code

    scopes = cfg.sync.scopes
    if not 1 <= len(scopes) <= 16:
        raise ConfigError(path, "sync.scopes", f"must list 1 to 16 scopes, got {len(scopes)}")
    for i, scope in enumerate(scopes):
        if not SCOPE_RE.fullmatch(scope):
            raise ConfigError(path, f"sync.scopes[{i}]", f"{scope!r} is not a scope (all, org-<id>, group-<id>)")
        if scope in scopes[:i]:
            raise ConfigError(path, f"sync.scopes[{i}]", f"{scope!r} is listed twice")
    if len(cfg.sync.trusted_keys) > 2:
        raise ConfigError(path, "sync.trusted_keys", "a terminal trusts at most 2 keys (current and next)")


#: [modes] the sections each mode reads; a section of another mode is a mistake worth a clear error.
MODE_SECTIONS = {"pos": ("pos", "venue"), "canteen": ("canteen",), "access": ("door",)}


def _check_modes(cfg: Config, path: str) -> None:
    """[pos]/[venue]/[canteen]/[door]: only the current mode's, and no venue and merchant in one."""
    mine = MODE_SECTIONS[cfg.terminal.mode]
    for section in ("pos", "venue", "canteen", "door"):
        if getattr(cfg, section) is not None and section not in mine:
            raise ConfigError(path, section, f"is not read by a {cfg.terminal.mode!r} terminal "
                              f"(it reads {', '.join(f'[{s}]' for s in mine)})")
    if cfg.pos is not None and cfg.venue is not None:
        raise ConfigError(path, "venue", "a counter is a merchant ([pos]) or a union venue ([venue]), not both")
