"""Signed remote commands: open the door once, lockdown, free passage, sync, reload, message.

Anyone holding broker credentials can publish to ``t/{id}/cmd``, and MQTT
redelivers (QoS 1 after a reconnect) and replays (a retained message, on every
subscribe). So a command acts only if all of this holds:

* it is an Ed25519 envelope (:mod:`terminal.signing`) of kind ``command``,
  signed by a trusted command key for *this* terminal (scope = terminal id);
* it has not expired, claims no more than ``commands.max_ttl_s`` of validity
  and was not issued in the future (beyond a small clock tolerance);
* its nonce has never been seen. Seen nonces are committed to the journal
  database *before* the command acts, so a redelivery, a replay or a crash
  half-way can never make it act twice (at most once, by design: a door
  must not open twice because a PUBACK was lost). Nonces are kept until
  their envelope has long expired, after which expiry alone refuses a replay.

Every command that acts is also journaled as a ``command`` transaction
(before it acts, like a tap), so the back office's record of who opened which
door includes remote openings. Every outcome, refusals included, is published
on ``t/{id}/cmd/result``; refusals of unauthenticated input are rate-limited
so a flood of junk cannot turn the terminal into an amplifier.

The terminal's side of each action is a :class:`CommandTarget` method: the
app implements five small methods, this module does everything else.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import signing
from .config import Config
from .exceptions import PayloadError, ReplayError, SignatureError, StorageError, UniontermError, UnsignedError
from .journal import Journal, TxEntry
from .rules.door import DoorMode
from .sync.strict import canonical_json, check_keys, get_choice, get_int, get_str, loads_object
from .uplink import Uplink

log = logging.getLogger("unionterm.commands")

NONCE_RE = re.compile(r"[0-9a-f]{16,64}")
#: How far in the future ``issued`` may lie (terminal and back-office clocks differ a little).
CLOCK_SKEW_S = 300
#: Seen nonces are kept this long after their envelope expired.
NONCE_KEEP_S = 86_400
MAX_MESSAGE_CHARS = 40
MAX_MESSAGE_S = 600
#: Refusals of unauthenticated input reported per window (the rest are only logged).
REFUSAL_REPORTS = 5
REFUSAL_WINDOW_S = 10.0

OPEN_DOOR = "open_door"
LOCKDOWN = "lockdown"
FREE_PASSAGE = "free_passage"
NORMAL = "normal"
SYNC_NOW = "sync_now"
RELOAD_CONFIG = "reload_config"
SHOW_MESSAGE = "show_message"
ACTIONS = frozenset({OPEN_DOOR, LOCKDOWN, FREE_PASSAGE, NORMAL, SYNC_NOW, RELOAD_CONFIG, SHOW_MESSAGE})
_DOOR_MODES = {LOCKDOWN: DoorMode.LOCKDOWN, FREE_PASSAGE: DoorMode.FREE_PASSAGE, NORMAL: DoorMode.NORMAL}
#: Actions that hand something out; refused when they cannot be journaled first.
VALUE_ACTIONS = frozenset({OPEN_DOOR, FREE_PASSAGE})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS command_nonce (
    nonce TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    action TEXT NOT NULL,
    kid TEXT NOT NULL,
    expires INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS command_state (k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID;
"""


class CommandTarget(Protocol):
    """What the terminal does for each action; raise :class:`UniontermError` to refuse."""

    def open_door_once(self) -> None:
        """Release the door for one pulse (door terminals only)."""
        ...

    def set_door_mode(self, mode: DoorMode) -> None:
        """Lockdown, free passage or back to normal (door terminals only)."""
        ...

    def sync_now(self) -> None:
        """Fetch member lists now instead of waiting for the next change."""
        ...

    def reload_config(self) -> Callable[[], None]:
        """Validate the config file again (raise if it is invalid); return what applies it.

        The returned callable runs once the command's result is published,
        since applying a config may mean stopping the terminal.
        """
        ...

    def show_message(self, text: str, seconds: float) -> None:
        """Show ``text`` on the screen for ``seconds``."""
        ...


@dataclass(frozen=True)
class Command:
    """A verified command, ready to act on."""

    nonce: str
    action: str
    args: dict[str, Any]
    version: int
    issued: int
    expires: int
    kid: str


@dataclass(frozen=True)
class CommandResult:
    """Payload of ``t/{id}/cmd/result``; ``nonce`` is empty when the command could not be trusted."""

    terminal: str
    status: str  # done | refused | failed
    reason: str = ""
    nonce: str = ""
    action: str = ""
    version: int = 0
    at: int = 0
    detail: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return canonical_json({"terminal": self.terminal, "status": self.status, "reason": self.reason,
                               "nonce": self.nonce, "action": self.action, "version": self.version,
                               "at": self.at, "detail": self.detail})


# -- codec (both sides) ---------------------------------------------------------------


def encode_command_body(nonce: str, action: str, args: Mapping[str, Any] | None = None) -> bytes:
    """The signed body; validated with the terminal's own rules before it is signed."""
    body = canonical_json({"nonce": nonce, "action": action, "args": dict(args or {})})
    decode_command_body(body)
    return body


def decode_command_body(body: bytes) -> tuple[str, str, dict[str, Any]]:
    """``(nonce, action, args)`` from a verified body, every field checked."""
    where = "command"
    obj = check_keys(loads_object(body, where), where, frozenset({"nonce", "action", "args"}))
    nonce = get_str(obj, "nonce", where, 64, NONCE_RE, allow_empty=False)
    action = get_choice(obj, "action", where, ACTIONS)
    args = obj["args"]
    if action == SHOW_MESSAGE:
        check_keys(args, f"{where}.args", frozenset({"text", "seconds"}))
        get_str(args, "text", f"{where}.args", MAX_MESSAGE_CHARS, allow_empty=False)
        get_int(args, "seconds", f"{where}.args", 1, MAX_MESSAGE_S)
    else:
        check_keys(args, f"{where}.args", frozenset())
    return nonce, action, args


def build_command(signer: Ed25519PrivateKey, terminal_id: str, version: int, action: str,
                  args: Mapping[str, Any] | None = None, issued: int | None = None, ttl_s: int = 300,
                  nonce: str | None = None) -> bytes:
    """Back-office side: a signed command for one terminal (``version`` counts per terminal)."""
    issued = int(time.time()) if issued is None else issued
    body = encode_command_body(nonce or secrets.token_hex(16), action, args)
    return signing.sign(signer, signing.KIND_COMMAND, terminal_id, version, issued, issued + ttl_s, body)


def decode_result(payload: bytes) -> CommandResult:
    """Back-office side: a terminal's command result."""
    where = "cmd.result"
    keys = frozenset({"terminal", "status", "reason", "nonce", "action", "version", "at", "detail"})
    obj = check_keys(loads_object(payload, where), where, keys)
    if type(obj["detail"]) is not dict:
        raise PayloadError(f"{where}.detail", "expected an object")
    return CommandResult(terminal=get_str(obj, "terminal", where, 64),
                         status=get_choice(obj, "status", where, {"done", "refused", "failed"}),
                         reason=get_str(obj, "reason", where, 300), nonce=get_str(obj, "nonce", where, 64),
                         action=get_str(obj, "action", where, 32),
                         version=get_int(obj, "version", where, 0, signing.MAX_INT),
                         at=get_int(obj, "at", where, 0, signing.MAX_INT), detail=obj["detail"])


def refusal_reason(exc: PayloadError) -> str:
    """The stable word for why a command was not trusted."""
    if isinstance(exc, SignatureError):
        return "unsigned" if isinstance(exc, UnsignedError) else "bad_signature"
    if isinstance(exc, ReplayError):
        if exc.where.endswith(".nonce"):
            return "replayed"
        if exc.where.endswith(".issued"):
            return "not_yet_valid"
        return "validity_too_long" if "validity" in exc.problem else "expired"
    return "malformed"


# -- the terminal's side ------------------------------------------------------------------


class CommandProcessor:
    """Verifies, de-duplicates, journals and executes commands; reports every outcome."""

    def __init__(self, cfg: Config, journal: Journal, target: CommandTarget, uplink: Uplink,
                 trusted: Mapping[str, Ed25519PublicKey] | None = None,
                 wall: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.terminal_id = cfg.terminal.id
        self.journal = journal
        self.target = target
        self.uplink = uplink
        if trusted is None:
            trusted = signing.load_trusted(cfg.config_path(p) for p in cfg.commands.public_keys)
        self.trusted = dict(trusted)
        self._wall = wall
        self._seen: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._reports: list[float] = []
        self.done = 0
        self.refused = 0
        uplink.subscribe(uplink.topics.cmd, self.handle, cfg.commands.max_bytes)

    async def start(self) -> DoorMode:
        """Create the tables, forget long-expired nonces, re-apply a persisted door mode."""
        def work(conn: sqlite3.Connection) -> str | None:
            for statement in _SCHEMA.strip().split(";\n"):
                conn.execute(statement)
            conn.execute("DELETE FROM command_nonce WHERE expires < ?", (int(self._wall()) - NONCE_KEEP_S,))
            row = conn.execute("SELECT v FROM command_state WHERE k = 'door_mode'").fetchone()
            return row[0] if row else None

        try:
            stored = await self.journal.transact(work)
        except StorageError as exc:
            log.error("event=commands_storage_unavailable error=%r", str(exc))
            return DoorMode.NORMAL
        mode = DoorMode(stored) if stored in {m.value for m in DoorMode} else DoorMode.NORMAL
        if mode is not DoorMode.NORMAL:
            try:
                self.target.set_door_mode(mode)
                log.warning("event=door_mode_restored mode=%s", mode.value)
            except UniontermError as exc:
                log.error("event=door_mode_restore_failed mode=%s error=%r", mode.value, str(exc))
        return mode

    async def handle(self, topic: str, payload: bytes) -> None:
        """The uplink handler for ``t/{id}/cmd``; raises :class:`PayloadError` for what it refuses."""
        now = self._wall()
        try:
            command = self._verify(payload, now)
        except PayloadError as exc:
            self.refused += 1
            if self._may_report(now):
                await self._publish(CommandResult(self.terminal_id, "refused", refusal_reason(exc),
                                                  at=int(now * 1000), detail={"problem": exc.problem[:200]}))
            raise
        await self._execute(command, now)

    def _verify(self, payload: bytes, now: float) -> Command:
        verified = signing.verify(payload, self.trusted, signing.KIND_COMMAND, self.terminal_id, now,
                                  self.cfg.commands.max_bytes)
        h = verified.header
        if h.expires - h.issued > self.cfg.commands.max_ttl_s:
            raise ReplayError("command.header.expires",
                              f"claims {h.expires - h.issued} s of validity, at most {self.cfg.commands.max_ttl_s}")
        if h.issued > now + CLOCK_SKEW_S:
            raise ReplayError("command.header.issued", f"issued {h.issued} is in the future (now {int(now)})")
        nonce, action, args = decode_command_body(verified.body)
        return Command(nonce, action, args, h.version, h.issued, h.expires, h.kid)

    def _may_report(self, now: float) -> bool:
        self._reports = [t for t in self._reports if now - t < REFUSAL_WINDOW_S]
        if len(self._reports) >= REFUSAL_REPORTS:
            return False
        self._reports.append(now)
        return True

    async def _claim(self, command: Command, now: float) -> tuple[str, str] | None:
        """Record the nonce durably; the earlier outcome if it was already there."""
        def work(conn: sqlite3.Connection) -> tuple[str, str] | None:
            row = conn.execute("SELECT status, reason FROM command_nonce WHERE nonce = ?",
                               (command.nonce,)).fetchone()
            if row is not None:
                return row[0], row[1]
            conn.execute("INSERT INTO command_nonce (nonce, version, action, kid, expires, received_ms, status)"
                         " VALUES (?, ?, ?, ?, ?, ?, 'started')",
                         (command.nonce, command.version, command.action, command.kid, command.expires,
                          int(now * 1000)))
            return None
        return await self.journal.transact(work)

    async def _execute(self, command: Command, now: float) -> None:
        base = CommandResult(self.terminal_id, "done", nonce=command.nonce, action=command.action,
                             version=command.version, at=int(now * 1000))
        try:
            if command.nonce in self._seen:
                earlier: tuple[str, str] | None = ("started", "")
            else:
                earlier = await self._claim(command, now)
        except StorageError as exc:
            if command.action != LOCKDOWN:  # a lockdown is safe to act on even if it might repeat
                self.refused += 1
                await self._publish(replace(base, status="refused", reason="storage_unavailable"))
                raise UniontermError(f"command {command.nonce}: cannot record its nonce: {exc}") from exc
            earlier = None
        if earlier is not None:
            self.refused += 1
            await self._publish(replace(base, status="refused", reason="replayed",
                                         detail={"earlier_status": earlier[0]}))
            raise ReplayError("command.nonce", f"nonce {command.nonce} already seen (status {earlier[0]})")
        self._seen.add(command.nonce)
        status, reason, after = "done", "", None
        try:
            after = await self._perform(command)
        except UniontermError as exc:
            status, reason = "refused", str(exc)[:300]
        except Exception as exc:  # noqa: BLE001 - reported, and the terminal keeps serving
            log.exception("event=command_failed nonce=%s action=%s", command.nonce, command.action)
            status, reason = "failed", f"{type(exc).__name__}: {exc}"[:300]
        if status == "done":
            self.done += 1
        else:
            self.refused += 1
        log.info("event=command nonce=%s action=%s version=%d status=%s reason=%r",
                 command.nonce, command.action, command.version, status, reason)
        await self._finish(command, status, reason)
        await self._publish(replace(base, status=status, reason=reason))
        if after is not None:
            after()  # e.g. the stop that applies a reloaded config, once the result is out

    async def _perform(self, command: Command) -> Callable[[], None] | None:
        """Act, with the journal record the action needs: before it if it grants value, else after."""
        value = command.action in VALUE_ACTIONS
        if value:
            await self._journal(command, "approve", "")  # no record, no opening
        try:
            after = self._act(command)
        except UniontermError as exc:
            await self._journal(command, "deny", str(exc)[:200])
            raise
        if not value:
            await self._journal(command, "approve", "")
        return after

    async def _journal(self, command: Command, decision: str, refusal: str) -> None:
        detail = {"nonce": command.nonce, "version": command.version, "kid": command.kid, **command.args}
        if refusal:
            detail["refused"] = refusal
        entry = TxEntry(mode=self.cfg.terminal.mode, kind="command", decision=decision, reason=command.action,
                        grants_value=decision == "approve" and command.action in VALUE_ACTIONS, detail=detail)
        try:
            await self.journal.append(entry)
        except StorageError:
            if entry.grants_value:
                raise
            log.error("event=command_not_journaled nonce=%s action=%s decision=%s",
                      command.nonce, command.action, decision)

    def _act(self, command: Command) -> Callable[[], None] | None:
        action = command.action
        if action == OPEN_DOOR:
            self.target.open_door_once()
        elif action in _DOOR_MODES:
            self.target.set_door_mode(_DOOR_MODES[action])  # which calls remember_door_mode
        elif action == SYNC_NOW:
            self.target.sync_now()
            self.uplink.kick()
        elif action == RELOAD_CONFIG:
            return self.target.reload_config()
        elif action == SHOW_MESSAGE:
            self.target.show_message(command.args["text"], float(command.args["seconds"]))
        return None

    def remember_door_mode(self, mode: DoorMode) -> None:
        """Persist the door mode and announce it, whoever set it (command or supervisor card).

        The target calls this from ``set_door_mode``; it runs in the background
        so the door itself never waits for a disk write.
        """
        async def work() -> None:
            await self._store_state("door_mode", mode.value)
            await self.uplink.refresh_presence()
        task = asyncio.get_running_loop().create_task(work(), name="door-mode")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _store_state(self, key: str, value: str) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO command_state (k, v) VALUES (?, ?)", (key, value))
        try:
            await self.journal.transact(work)
        except StorageError as exc:
            log.error("event=command_state_not_saved key=%s error=%r", key, str(exc))

    async def _finish(self, command: Command, status: str, reason: str) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE command_nonce SET status = ?, reason = ? WHERE nonce = ?",
                         (status, reason, command.nonce))
        try:
            await self.journal.transact(work)
        except StorageError as exc:
            log.error("event=command_result_not_saved nonce=%s error=%r", command.nonce, str(exc))

    async def _publish(self, result: CommandResult) -> None:
        if not await self.uplink.publish(self.uplink.topics.cmd_result, result.encode()):
            log.warning("event=command_result_unsent nonce=%s status=%s", result.nonce or "-", result.status)
