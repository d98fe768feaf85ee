"""The terminal's one TOML file, as typed and validated objects.

A terminal that starts with a wrong config hands out nothing or opens the
wrong door, so the whole file is checked at start: every error names the
file, the dotted key and what is wrong, and ``unionterm check-config`` exits
78 (EX_CONFIG) with that message.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .configschema import bounded, load_section
from .exceptions import ConfigError

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
    door_contact_pin: int | None = None
    exit_button_pin: int | None = None


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
    """The durable transaction journal (its own database file)."""

    db: str = "journal.db"


@dataclass(frozen=True)
class AccessSection:
    """Door mode: how long the relay is energised for a granted card."""

    pulse_ms: int = bounded(3000, 100, 60000)


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
    if "source" in table:
        raise ConfigError(path, "source", "unknown key")
    cfg: Config = load_section(Config, table, path)
    object.__setattr__(cfg, "source", path)
    _cross_check(cfg, path)
    return cfg


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
