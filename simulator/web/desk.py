"""The workbench's back office for member lists: the reference back office, on the rig's broker.

Blocking a card or changing a member on the page must travel the road it
travels in the field, or the page would show a terminal that merely trusts
its own database: the change is made in a :class:`BackOfficeHome` (its own
folder beside the rig's), signed with that home's key by the reference
:class:`BackOffice`, published over MQTT, verified and applied by the
terminal's member sync. The terminal's config trusts the home's public key
(:meth:`Desk.sync_section`), so nothing else can change its lists.

Publishing opens a client per action: the person takes the broker down on
purpose, and a refused publish says so instead of waiting on a dead
connection. The answering side (terminal reports, resync requests) runs as
a loop that reconnects, like the transaction feed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import aiomqtt

from terminal.exceptions import ActionRefused
from terminal.members import MemberStore
from terminal.sync.hotlist import ADD_REASONS

from ..backoffice.home import BackOfficeHome, Published
from ..backoffice.office import BackOffice, BrokerSettings, terminal_sync_section

log = logging.getLogger("unionterm.sim.web.desk")

#: The one list the workbench's terminal serves.
SCOPE = "all"
STATUSES = ("active", "suspended", "left")
#: How long an action waits for the terminal to apply what was published.
APPLY_WAIT_S = 5.0
RETRY_S = 0.2


class Desk:
    """One back-office home and the broker it publishes on; :meth:`open` before use."""

    def __init__(self, home_dir: Path, port: int, host: str = "127.0.0.1") -> None:
        self.home_dir = home_dir
        self.settings = BrokerSettings(host=host, port=port, client_id="unionterm-workbench-office")
        self.home: BackOfficeHome | None = None
        self.connected = False
        self.last = ""

    def open(self) -> None:
        """Open (or create, with its first signing key) the home; the terminal's config needs the key."""
        self.home = BackOfficeHome(self.home_dir)
        if self.home.current_kid() is None:
            self.home.generate_key()

    def close(self) -> None:
        if self.home is not None:
            self.home.close()
            self.home = None

    def _home(self) -> BackOfficeHome:
        if self.home is None:
            raise ActionRefused("the back office is not open")
        return self.home

    def sync_section(self) -> str:
        """The ``[sync]`` section of a terminal that takes this back office's lists."""
        return terminal_sync_section([str(self._home().public_key_path())])

    @contextlib.asynccontextmanager
    async def _office(self) -> AsyncIterator[BackOffice]:
        """A back office on a fresh connection; a broker that is not there refuses the action."""
        try:
            async with self.settings.client() as client:
                yield BackOffice(self._home(), client)
        except aiomqtt.MqttError as exc:
            raise ActionRefused(f"the back office cannot reach the broker ({exc}): bring it up first") from None

    # -- publishing ---------------------------------------------------------------------------

    async def publish_members(self, records: Iterable[Mapping[str, Any]]) -> Published:
        """Make ``records`` the member list and publish it as a snapshot, unless it already was.

        A workbench restarted on the same folder keeps what it published: the
        terminal holds that list, and the next delta must follow it.
        """
        home = self._home()
        published = home.published(SCOPE)
        if published is not None:
            return published
        home.replace_members(records)
        async with self._office() as office:
            published = await office.publish_snapshot(SCOPE)
        self.last = f"snapshot v{published.version}: {published.count} members"
        return published

    async def set_status(self, member_no: str, status: str) -> Published:
        """Change one member's status in the back office and publish the change as a delta."""
        if status not in STATUSES:
            raise ActionRefused(f"status must be one of {', '.join(STATUSES)}")
        home = self._home()
        record = next((r for r in home.records() if r["member_no"] == member_no), None)
        if record is None:
            raise ActionRefused(f"the back office has no member {member_no}")
        if record["status"] == status:
            raise ActionRefused(f"{member_no} is {status} already: nothing to publish")
        async with self._office() as office:
            home.upsert_members([{**record, "status": status}])
            published = await office.publish_delta(SCOPE)
        if published is None:  # cannot happen after a change; a delta of nothing is not sent
            raise ActionRefused("nothing changed since the last publication")
        self.last = f"delta v{published.version}: {member_no} {status}"
        log.info("event=web_delta member=%s status=%s version=%d", member_no, status, published.version)
        return published

    async def block(self, ref: bytes, blocked: bool, reason: str = "") -> int:
        """Publish a signed hot-list change that blocks (or releases) one card; its sequence."""
        ref_hex = ref.hex()
        why = reason or ("lost" if blocked else "found")
        if blocked and why not in ADD_REASONS:
            raise ActionRefused(f"a block reason is one of {', '.join(sorted(ADD_REASONS))}")
        async with self._office() as office:
            seq = await (office.change_hotlist(add={ref_hex: why}) if blocked
                         else office.change_hotlist(remove={ref_hex: why}))
        self.last = f"hot list #{seq}: {'block' if blocked else 'release'} {ref_hex[:12]}… ({why})"
        log.info("event=web_hotlist seq=%d blocked=%s ref=%s", seq, blocked, ref_hex[:12])
        return seq

    # -- answering ----------------------------------------------------------------------------

    async def serve(self) -> None:
        """Forever: keep terminals' reports and answer their resync requests; reconnect when the broker returns.

        On a home of its own (its own database connection), so a report
        stored here never lands inside a publication's transaction.
        """
        home = BackOfficeHome(self.home_dir)
        settings = BrokerSettings(host=self.settings.host, port=self.settings.port,
                                  client_id="unionterm-workbench-office-serve")
        try:
            while True:
                try:
                    async with settings.client() as client:
                        self.connected = True
                        await BackOffice(home, client).serve()
                except aiomqtt.MqttError as exc:
                    log.debug("event=desk_disconnected error=%r", str(exc))
                finally:
                    self.connected = False
                await asyncio.sleep(RETRY_S)
        finally:
            home.close()

    # -- looking ------------------------------------------------------------------------------

    def view(self, store: MemberStore | None) -> dict[str, Any]:
        """What the back office published, what the terminal holds and reported, for the page."""
        home = self._home()
        published = home.published(SCOPE)
        report = home.reports()
        held = store.held.get(SCOPE) if store is not None else None
        return {
            "serving": self.connected, "last": self.last, "scope": SCOPE, "statuses": list(STATUSES),
            "published": {"version": published.version, "count": published.count} if published else None,
            "hotlist": home.hotlist_seq(),
            "terminal": {"version": held.version if held else 0, "count": held.count if held else 0,
                         "hotlist": store.hotlist_state().version if store is not None else 0},
            "reported": {terminal: {"lists": {s.scope: s.version for s in r.lists}, "hotlist": r.hotlist}
                         for terminal, r in report.items()},
            "members": [{"member_no": r["member_no"], "name": r["name"], "status": r["status"]}
                        for r in home.records()],
        }


async def until(condition: Callable[[], bool], timeout: float = APPLY_WAIT_S) -> bool:
    """Wait for ``condition`` (the terminal applied a publication, a client connected); False if it never came."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True

