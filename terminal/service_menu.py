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
* :class:`~terminal.service_session.ServiceSession` runs it on the terminal: it journals the entry,
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

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from .journal import Record
from .modes.keys import Typed, Typing
from .rules.clock import local
from .storage import StorageState, screen_text
from .ui import Screen

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
