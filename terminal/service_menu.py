"""Technician service mode: the menu a service card opens on the OLED, driven by the keypad.

Technicians come back to a terminal that misbehaves, usually without a
laptop. Their card (a member record with ``role = "technician"``) turns the
terminal's own screen and keypad into a service panel: status (terminal id,
IP, broker, list versions and ages, unsent queue, reader, clock), output
tests (relay, LEDs, buzzer), a forced sync, and the last transactions.

Two layers, so the menu logic is tested without a loop or a screen:

* :class:`ServiceMenu` is a pure state machine. Keys go in; out come an
  effect for the runner (check this PIN, perform this action, exit) and, for
  any page, a :class:`~terminal.ui.Screen` built from a status snapshot.
* :class:`ServiceSession` runs it on the terminal: it journals the entry,
  every action (before acting, like a tap: the relay test opens a door) and
  the exit, gathers the snapshot, draws, and ends on exit, idle timeout or a
  stop request.

The session runs inside the terminal's decision stage, so taps that arrive
meanwhile wait in the decision queue and are served, in order, once the
technician leaves. A technician whose record carries a ``pin_hash`` must
enter the PIN first (a copied UID badge alone must not open the door test);
three wrong PINs end the session.

Keys (4x4 keypad legends ``123A 456B 789C *0#D``): digits choose, ``#``
confirms or pages on, ``A``/``B`` page back and forth, ``*`` goes back (and
leaves from the main menu), ``D`` leaves from anywhere.
"""

from __future__ import annotations

import asyncio
import enum
import fcntl
import logging
import socket
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .exceptions import StorageError
from .hardware import Hardware, Light
from .journal import Journal, Record, TxEntry
from .model import CardIdentity, Decision, Member, Verdict
from .modes.keys import Typed, Typing
from .rules.clock import local
from .rules.membership import check_eligibility
from .rules.pin import verify_pin
from .storage import StorageState, screen_text
from .ui import Screen

if TYPE_CHECKING:
    from .config import Config
    from .telemetry import ListInfo
    from .uplink import Uplink

log = logging.getLogger("unionterm.service")

TECHNICIAN = "technician"
MAX_PIN_TRIES = 3
MAX_PIN_DIGITS = 8
HISTORY_SIZE = 10
#: Lines per screen below the headline (the renderer draws three).
LINES = 3
#: Journal kinds written by service mode (left out of the "last transactions" page).
KIND_ENTER = "service_mode"
KIND_ACTION = "service_action"
KIND_EXIT = "service_exit"
#: What listeners of the tap (demo, tests, bench) see for a service card: not a grant, an entry.
SERVICE_DECISION = Decision(Verdict.APPROVE, KIND_ENTER)

TEXTS: dict[str, dict[str, str]] = {
    "zh": {
        "title": "维护模式", "pin_prompt": "请输入维护密码", "pin_wrong": "密码错误 {n}/{max}",
        "menu": "维护菜单", "menu1": "1状态 2测试", "menu2": "3同步 4记录", "menu3": "*退出",
        "status": "状态", "ip": "IP", "no_ip": "无网络", "broker": "服务器", "connected": "已连接",
        "disconnected": "未连接", "lists": "名单", "none": "无", "unsent": "待发", "unacked": "待确认",
        "reader": "读卡器", "online": "正常", "offline": "离线", "clock": "时钟", "synced": "已同步",
        "unsynced": "未同步", "storage": "存储",
        "tests": "输出测试", "tests1": "1继电器 2绿灯", "tests2": "3红灯 4蜂鸣器",
        "relay": "继电器", "green": "绿灯", "red": "红灯", "buzzer": "蜂鸣器", "tested": "已测试 {what}",
        "refused": "未执行 存储故障",
        "sync": "同步", "sync1": "#立即同步", "sync_requested": "已请求同步",
        "history": "最近记录", "empty": "无记录", "back": "*返回",
        "approve": "通过", "deny": "拒绝",
    },
    "en": {
        "title": "Service mode", "pin_prompt": "Enter service PIN", "pin_wrong": "Wrong PIN {n}/{max}",
        "menu": "Service menu", "menu1": "1Status 2Tests", "menu2": "3Sync 4History", "menu3": "*Exit",
        "status": "Status", "ip": "IP", "no_ip": "no network", "broker": "Broker", "connected": "connected",
        "disconnected": "offline", "lists": "Lists", "none": "none", "unsent": "Unsent", "unacked": "unacked",
        "reader": "Reader", "online": "ok", "offline": "offline", "clock": "Clock", "synced": "synced",
        "unsynced": "NOT synced", "storage": "Storage",
        "tests": "Output tests", "tests1": "1Relay 2Green", "tests2": "3Red 4Buzzer",
        "relay": "relay", "green": "green LED", "red": "red LED", "buzzer": "buzzer", "tested": "Tested {what}",
        "refused": "Not done: storage",
        "sync": "Sync", "sync1": "#Sync now", "sync_requested": "Sync requested",
        "history": "History", "empty": "no records", "back": "*Back",
        "approve": "ok", "deny": "denied",
    },
}


def _t(lang: str, key: str, **values: object) -> str:
    return TEXTS.get(lang, TEXTS["en"]).get(key, key).format(**values)


# --- what the menu shows: values gathered by the runner -------------------------------------


@dataclass(frozen=True)
class ListState:
    """One member list as held: scope, version and when it was last applied (unix s, 0 = never)."""

    scope: str
    version: int
    updated_at: int


@dataclass(frozen=True)
class Status:
    """A snapshot of everything the status pages show, taken when a page is drawn."""

    terminal_id: str
    mode: str
    addresses: tuple[str, ...]
    broker_connected: bool
    lists: tuple[ListState, ...]
    unsent: int
    unacked: int
    readers: tuple[str, ...]
    wall_ms: int
    clock_ok: bool
    #: A :class:`~terminal.storage.StorageState` value.
    storage: str


@dataclass(frozen=True)
class TxLine:
    """One journal record as the history page lists it."""

    seq: int
    time_ms: int
    kind: str
    decision: str
    member_no: str

    @classmethod
    def from_record(cls, record: Record) -> "TxLine":
        body = record.fields
        return cls(record.seq, int(body.get("time_ms", 0)), str(body.get("kind", "")),
                   str(body.get("decision", "")), str(body.get("member_no", "")))


def age_text(seconds: float) -> str:
    """A compact age for a 128-pixel line: 45s, 12m, 5h, 3d."""
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# --- the state machine ------------------------------------------------------------------------


class Page(enum.Enum):
    """The menu's pages; the values name the PNGs and the journaled list of pages visited."""

    PIN = "pin"
    MENU = "menu"
    STATUS = "status"
    TESTS = "tests"
    SYNC = "sync"
    HISTORY = "history"


class Action(enum.Enum):
    """What the technician can make the terminal do; each is journaled before it happens."""

    RELAY = "relay"
    GREEN = "green"
    RED = "red"
    BUZZER = "buzzer"
    SYNC = "sync"

    @property
    def grants_value(self) -> bool:
        """The relay test energises the door strike: it is an opening like any other."""
        return self is Action.RELAY


@dataclass(frozen=True)
class CheckPin:
    """Effect: verify this PIN against the technician's hash, then call :meth:`ServiceMenu.pin_checked`."""

    pin: str


@dataclass(frozen=True)
class Perform:
    """Effect: journal and carry out ``action``, then call :meth:`ServiceMenu.performed`."""

    action: Action


@dataclass(frozen=True)
class Exit:
    """Effect: the session is over (``exit``, ``wrong_pin``, ``cancelled``)."""

    reason: str


Effect = CheckPin | Perform | Exit

STATUS_PAGES = 3
_MENU_KEYS = {"1": Page.STATUS, "2": Page.TESTS, "3": Page.SYNC, "4": Page.HISTORY}
_TEST_KEYS = {"1": Action.RELAY, "2": Action.GREEN, "3": Action.RED, "4": Action.BUZZER}


@dataclass
class ServiceMenu:
    """The service menu's state: which page, which sub-page, the PIN typed so far, the last message."""

    pin_required: bool
    lang: str = "zh"
    page: Page = Page.MENU
    index: int = 0
    pin: Typing = field(default_factory=lambda: Typing(MAX_PIN_DIGITS))
    tries: int = 0
    message: str = ""
    visited: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.pin_required:
            self.page = Page.PIN
        self.visited.append(self.page.value)

    def _go(self, page: Page) -> None:
        self.page, self.index, self.message = page, 0, ""
        if page.value not in self.visited:
            self.visited.append(page.value)

    def key(self, key: str, history_len: int = HISTORY_SIZE) -> Effect | None:
        """One key press; returns what the runner must do, if anything."""
        if self.page is Page.PIN:
            return self._pin_key(key)
        if key == "D":
            return Exit("exit")
        if self.page is Page.MENU:
            if key in _MENU_KEYS:
                self._go(_MENU_KEYS[key])
            elif key == "*":
                return Exit("exit")
            return None
        if key == "*":
            self._go(Page.MENU)
            return None
        if self.page is Page.TESTS and key in _TEST_KEYS:
            return Perform(_TEST_KEYS[key])
        if self.page is Page.SYNC and key == "#":
            return Perform(Action.SYNC)
        pages = STATUS_PAGES if self.page is Page.STATUS else self._history_pages(history_len)
        if self.page in (Page.STATUS, Page.HISTORY) and key in ("#", "B"):
            self.index = (self.index + 1) % pages
        elif self.page in (Page.STATUS, Page.HISTORY) and key == "A":
            self.index = (self.index - 1) % pages
        return None

    def _pin_key(self, key: str) -> Effect | None:
        """The keypad's one way of typing digits (:mod:`terminal.modes.keys`), the PIN kept nowhere else."""
        typed = self.pin.press(key)
        if typed is Typed.CANCELLED:
            return Exit("cancelled")
        if typed is Typed.DONE:
            entered, self.pin.text = self.pin.text, ""
            return CheckPin(entered)
        return None

    def pin_checked(self, ok: bool) -> Exit | None:
        """The PIN was right (on to the menu) or wrong (count it; the third ends the session)."""
        if ok:
            self._go(Page.MENU)
            return None
        self.tries += 1
        if self.tries >= MAX_PIN_TRIES:
            return Exit("wrong_pin")
        self.message = _t(self.lang, "pin_wrong", n=self.tries, max=MAX_PIN_TRIES)
        return None

    def performed(self, action: Action, done: bool) -> None:
        """Say on screen whether the action happened: a test the journal refused must not look done."""
        if not done:
            self.message = _t(self.lang, "refused")
        elif action is Action.SYNC:
            self.message = _t(self.lang, "sync_requested")
        else:
            self.message = _t(self.lang, "tested", what=_t(self.lang, action.value))

    @staticmethod
    def _history_pages(count: int) -> int:
        return max(1, -(-count // LINES))

    @property
    def name(self) -> str:
        """The page as a name, with the sub-page for paged ones (``status-2``): PNGs and logs use it."""
        if self.page in (Page.STATUS, Page.HISTORY):
            return f"{self.page.value}-{self.index + 1}"
        return self.page.value

    # -- screens ---------------------------------------------------------------------------

    def screen(self, status: Status, history: Sequence[TxLine] = ()) -> Screen:
        """The screen for the current page, from a snapshot taken just now."""
        lang = self.lang
        if self.page is Page.PIN:
            return Screen(_t(lang, "title"), (_t(lang, "pin_prompt"), "*" * len(self.pin.text) or "_", self.message),
                          alert=bool(self.message))
        if self.page is Page.MENU:
            return Screen(_t(lang, "menu"), (_t(lang, "menu1"), _t(lang, "menu2"), _t(lang, "menu3")))
        if self.page is Page.STATUS:
            return Screen(f"{_t(lang, 'status')} {self.index + 1}/{STATUS_PAGES}", self._status_lines(status))
        if self.page is Page.TESTS:
            return Screen(_t(lang, "tests"), (_t(lang, "tests1"), _t(lang, "tests2"), self.message or _t(lang, "back")))
        if self.page is Page.SYNC:
            queue = f"{_t(lang, 'unsent')} {status.unsent} {_t(lang, 'unacked')} {status.unacked}"
            return Screen(_t(lang, "sync"), (_t(lang, "sync1"), queue, self.message or _t(lang, "back")))
        return self._history_screen(history)

    def _status_lines(self, s: Status) -> tuple[str, ...]:
        lang = self.lang
        if self.index == 0:
            broker = _t(lang, "connected" if s.broker_connected else "disconnected")
            return (f"{s.terminal_id} {s.mode}", f"{_t(lang, 'ip')} {s.addresses[0] if s.addresses else _t(lang, 'no_ip')}",
                    f"{_t(lang, 'broker')} {broker}")
        if self.index == 1:
            now_s = s.wall_ms // 1000
            if s.lists:
                lists = " ".join(f"{x.scope} v{x.version} {age_text(now_s - x.updated_at) if x.updated_at else '-'}"
                                 for x in s.lists)
            else:
                lists = _t(lang, "none")
            reader = (f"{_t(lang, 'online')} {len(s.readers)}" if s.readers else _t(lang, "offline"))
            return (f"{_t(lang, 'lists')} {lists}", f"{_t(lang, 'unsent')} {s.unsent} {_t(lang, 'unacked')} {s.unacked}",
                    f"{_t(lang, 'reader')} {reader}")
        when = local(s.wall_ms / 1000)
        storage = screen_text(StorageState(s.storage), lang) or f"{_t(lang, 'storage')} {_t(lang, 'online')}"
        return (when.strftime("%Y-%m-%d %H:%M:%S"), f"{_t(lang, 'clock')} {_t(lang, 'synced' if s.clock_ok else 'unsynced')}",
                storage)

    def _history_screen(self, history: Sequence[TxLine]) -> Screen:
        lang = self.lang
        pages = self._history_pages(len(history))
        head = f"{_t(lang, 'history')} {self.index % pages + 1}/{pages}"
        if not history:
            return Screen(head, (_t(lang, "empty"),))
        start = (self.index % pages) * LINES
        lines = tuple(f"{local(tx.time_ms / 1000):%H:%M} {_t(lang, tx.decision)} {tx.member_no or tx.kind}"
                      for tx in history[start:start + LINES])
        return Screen(head, lines)


# --- on the terminal -----------------------------------------------------------------------


class ServiceHost(Protocol):
    """What a session needs from the terminal (:class:`terminal.app.Terminal` provides it)."""

    cfg: "Config"
    hw: Hardware
    journal: Journal | None
    uplink: "Uplink | None"
    readers_online: set[str]
    clock: Callable[[], tuple[int, bool]]
    list_versions: Callable[[], Mapping[str, "ListInfo"]]

    def show(self, screen: Screen, hold_s: float = 0.0) -> None: ...

    def sync_now(self) -> None: ...


def is_service_card(member: Member | None, hot: bool, now_s: int) -> bool:
    """A technician in good standing (a hot-listed or suspended technician card is an ordinary refusal)."""
    return (member is not None and member.role == TECHNICIAN
            and check_eligibility(member, hot, now_s) is None)


def local_addresses() -> tuple[str, ...]:
    """IPv4 addresses of the network interfaces (not loopback), asked of the kernel directly.

    No DNS and no packets: the status page must come up at once on a
    terminal whose network is exactly what is broken.
    """
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _index, name in socket.if_nameindex():
            if name == "lo":
                continue
            try:
                packed = fcntl.ioctl(sock.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))  # SIOCGIFADDR
            except OSError:
                continue  # interface without an IPv4 address
            found.append(socket.inet_ntoa(packed[20:24]))
    return tuple(found)


class ServiceSession:
    """One technician's visit: journaled entry, the menu on screen and keypad, journaled exit.

    ``keys`` is fed by the terminal's input loop while the session is the
    terminal's ``service_session``.
    """

    def __init__(self, host: ServiceHost, member: Member, identity: CardIdentity | None,
                 reader: str = "", addresses: Callable[[], tuple[str, ...]] = local_addresses) -> None:
        self.host = host
        self.member = member
        self.identity = identity
        self.reader = reader
        self.keys: asyncio.Queue[str] = asyncio.Queue()
        self.menu = ServiceMenu(pin_required=bool(member.pin_hash), lang=host.cfg.terminal.language)
        self.timeout_s = host.cfg.keypad.service_timeout_s
        self.actions = 0
        self.exit_reason = ""
        self._addresses = addresses
        self._started = time.monotonic()

    def _entry(self, kind: str, decision: str, reason: str, grants_value: bool = False,
               **detail: object) -> TxEntry:
        identity = self.identity
        return TxEntry(mode=self.host.cfg.terminal.mode, kind=kind, decision=decision, reason=reason,
                       card_ref=identity.card_ref.hex() if identity else "",
                       profile=identity.profile if identity else "",
                       strength=identity.strength.value if identity else "",
                       member_no=self.member.member_no, grants_value=grants_value, detail=dict(detail))

    async def enter(self) -> Record:
        """Journal the entry; raises :class:`StorageError` (and nothing opens) if it cannot be."""
        assert self.host.journal is not None
        record = await self.host.journal.append(self._entry(
            KIND_ENTER, "approve", TECHNICIAN, reader=self.reader, pin=self.menu.pin_required))
        log.info("event=service_mode_entered seq=%d member=%s pin=%s",
                 record.seq, self.member.member_no, self.menu.pin_required)
        return record

    async def run(self, stop: asyncio.Event) -> str:
        """Serve keys until the technician leaves, the idle timeout passes or the terminal stops."""
        await self.draw()
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while True:
                getter = asyncio.ensure_future(self.keys.get())
                done, _ = await asyncio.wait({getter, stopping}, timeout=self.timeout_s,
                                             return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    self.exit_reason = "stopping" if stopping in done else "timeout"
                    break
                effect = await self._handle(getter.result())
                if isinstance(effect, Exit):
                    self.exit_reason = effect.reason
                    break
                await self.draw()
        finally:
            stopping.cancel()
        await self._journal_exit()
        return self.exit_reason

    async def _handle(self, key: str) -> Effect | None:
        history = await self.history() if self.menu.page is Page.HISTORY else ()
        effect = self.menu.key(key, len(history))
        if isinstance(effect, CheckPin):
            ok = await asyncio.to_thread(verify_pin, self.member.pin_hash, effect.pin)  # PBKDF2: off the loop
            log.info("event=service_pin ok=%s member=%s", ok, self.member.member_no)
            effect = self.menu.pin_checked(ok)
        if isinstance(effect, Perform):
            self.menu.performed(effect.action, await self.perform(effect.action))
            effect = None
        return effect

    async def perform(self, action: Action) -> bool:
        """Journal ``action``, then do it; ``False`` (and nothing done) if it could not be journaled."""
        assert self.host.journal is not None
        try:
            record = await self.host.journal.append(self._entry(
                KIND_ACTION, "approve", action.value, grants_value=action.grants_value))
        except StorageError as exc:
            log.error("event=service_action_refused action=%s error=%r", action.value, str(exc))
            return False
        outputs = self.host.hw.outputs
        if action is Action.RELAY:
            outputs.pulse_relay(self.host.cfg.access.pulse_ms / 1000)
        elif action in (Action.GREEN, Action.RED):
            outputs.flash(Light.GREEN if action is Action.GREEN else Light.RED, 1.0)
        elif action is Action.BUZZER:
            outputs.beep((0.2, 0.1, 0.2))
        else:
            self.host.sync_now()
            if self.host.uplink is not None:
                self.host.uplink.kick()
        self.actions += 1
        log.info("event=service_action action=%s seq=%d", action.value, record.seq)
        return True

    async def _journal_exit(self) -> None:
        assert self.host.journal is not None
        seconds = round(time.monotonic() - self._started, 1)
        try:
            await self.host.journal.append(self._entry(
                KIND_EXIT, "none", self.exit_reason, pages=list(self.menu.visited), actions=self.actions,
                seconds=seconds))
        except StorageError as exc:  # the entry is on record; a lost exit must not block the taps waiting
            log.error("event=service_exit_unrecorded error=%r", str(exc))
        log.info("event=service_mode_left reason=%s actions=%d seconds=%.1f",
                 self.exit_reason, self.actions, seconds)

    # -- what the pages show -----------------------------------------------------------------

    async def status(self) -> Status:
        """A fresh snapshot for the status pages (taken at every redraw, so the pages are live)."""
        host = self.host
        assert host.journal is not None
        stats = await host.journal.stats()
        wall_ms, clock_ok = host.clock()
        lists = tuple(ListState(scope, info.version, info.updated_at)
                      for scope, info in sorted(host.list_versions().items()))
        connected = host.uplink is not None and host.uplink.connected.is_set()
        return Status(host.cfg.terminal.id, host.cfg.terminal.mode, self._addresses(), connected, lists,
                      stats.unpublished, stats.unacked, tuple(sorted(host.readers_online)), wall_ms, clock_ok,
                      stats.state.value)

    async def history(self) -> list[TxLine]:
        """The last :data:`HISTORY_SIZE` transactions, newest first (service records left out)."""
        journal = self.host.journal
        assert journal is not None
        window = HISTORY_SIZE * 4
        try:
            records = await journal.records_after(max(0, journal.last_seq - window), window)
        except StorageError:
            return []  # the status page says why; the menu itself must keep working
        lines = [TxLine.from_record(r) for r in records]
        return [tx for tx in reversed(lines) if not tx.kind.startswith("service_")][:HISTORY_SIZE]

    async def draw(self) -> None:
        """Show the current page; the page name is logged, the keys typed never are (PINs)."""
        history = await self.history() if self.menu.page is Page.HISTORY else ()
        self.host.show(self.menu.screen(await self.status(), history))
        log.info("event=service_page page=%s", self.menu.name)
