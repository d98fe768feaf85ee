"""Shared makings of the journal and uplink stack tests.

A :class:`TxRig` is the simulator's :class:`~simulator.rig.Rig` with extra
config (journal limits, uplink windows, command keys, the test tap FIFO).
:func:`tap` serves a member's card through the terminal's real decision
path without the ~0.8 s a vpcd card read takes, for tests that need
thousands of taps: the journal, uplink, broker and back office are real.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from simulator.people import Person
from simulator.rig import Rig
from simulator.services import Mosquitto, Pcscd, free_port
from terminal.taps import Tap
from terminal.cardref import card_ref
from terminal.config import Config, parse
from terminal.model import CardIdentity, Strength
from terminal.signing import write_public_key
from terminal.ui import Screen, render

JOURNAL_BLOCK = '[journal]\ndb = "journal.db"\n'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value)


def toml_section(name: str, values: dict[str, Any]) -> str:
    return f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())


class TxRig(Rig):
    """A rig whose config carries extra sections; ``journal`` replaces the ``[journal]`` table."""

    def __init__(self, workdir: Path, *, journal: dict[str, Any] | None = None,
                 tables: dict[str, dict[str, Any]] | None = None, **kwargs: Any) -> None:
        extra = "".join("\n" + toml_section(name, values) for name, values in (tables or {}).items())
        kwargs["sections"] = kwargs.get("sections", "") + extra
        super().__init__(workdir, **kwargs)
        self.journal_settings = {"db": "journal.db", **(journal or {})}

    def write_config(self) -> Path:
        path = super().write_config()
        text = path.read_text()
        assert JOURNAL_BLOCK in text, "the simulator's config layout changed"
        path.write_text(text.replace(JOURNAL_BLOCK, toml_section("journal", self.journal_settings)))
        return path


@contextlib.asynccontextmanager
async def running_rig(workdir: Path, pcscd: Pcscd, broker: Mosquitto,
                      keys: dict[str, Ed25519PublicKey] | None = None, **kwargs: Any) -> AsyncIterator[TxRig]:
    """A started :class:`TxRig` whose uplink is subscribed; ``keys`` are written as public-key files."""
    if not pcscd.running:  # a test that stopped it must not break the next one
        pcscd.start()
    workdir.mkdir(parents=True)
    for name, key in (keys or {}).items():
        write_public_key(workdir / name, key)
    async with TxRig(workdir, pcscd=pcscd, broker=broker, capture=False, **kwargs) as rig:
        await asyncio.wait_for(rig.terminal.uplink.connected.wait(), 10)
        yield rig


def shows(rig: Rig, screen: Screen) -> bool:
    """Is exactly ``screen`` on the rig's display right now?"""
    shown = rig.hardware.display.device.image
    return shown.tobytes() == render(screen, rig.hardware.display.size).convert(shown.mode).tobytes()


def identity(rig: Rig, person: Person) -> CardIdentity:
    """What the UID profile would read from ``person``'s badge."""
    return CardIdentity("uid", card_ref(rig.card_key, "uid", person.uid), Strength.WEAK)


def tap(rig: Rig, person: Person) -> None:
    """Queue ``person``'s badge for a decision, as the card stage does after reading it."""
    now = time.perf_counter()
    rig.terminal.submit(Tap("direct", now, identity(rig, person), read_at=now))


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


def uplink_config(state: Path, port: int, terminal_id: str = "T-1", **sections: dict[str, Any]) -> Config:
    """A terminal config for journal + uplink tests that need no card reader."""
    text = toml_section("terminal", {"id": terminal_id, "mode": "access", "state_dir": str(state)})
    text += toml_section("mqtt", {"port": port, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5})
    text += "".join(toml_section(name, values) for name, values in sections.items())
    return parse(text, "test")


class BrokerProxy:
    """A TCP proxy in front of the broker: what goes up passes, what comes down is the subclass's ``_down``.

    ``refuse()`` stops listening (connecting then fails at once, as with a
    broker that is down) and ``listen()`` opens the same port again;
    ``client_closed`` is set once a client has closed its end.
    """

    def __init__(self, broker_port: int) -> None:
        self.broker_port = broker_port
        self.port = free_port()
        self.client_closed = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def listen(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    def refuse(self) -> None:
        """Stop listening: connecting fails at once, as with a broker that is down."""
        if self._server is not None:
            self._server.close()
            self._server = None

    async def __aenter__(self) -> "BrokerProxy":
        await self.listen()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.refuse()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.broker_port)
        except OSError:
            writer.close()
            return
        for coro in (self._up(reader, up_w), self._down(up_r, writer)):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _up(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            self.client_closed.set()
        writer.close()

    async def _down(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError
