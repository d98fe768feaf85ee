"""Where the workbench meets the running terminal and the simulator: the card rack, the modes, the intake.

The page shows what the running terminal can really do, never a mock-up:
the rack lists the simulator's own cards (genuine and faulty), a card kind
the terminal's ``[cards]`` profiles do not read is shown but cannot be
presented, and what a mode lacks (the cash-register link outside ``pos``)
says so. Everything here reads the live objects of a :class:`WorkbenchRig`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from terminal.cardref import card_ref

from ..backoffice.txconsume import TxConsumer, TxStore
from ..cards.desfire import Fault
from ..cards.emv import EmvFault
from ..cards.uid import UidCard
from ..people import Person
from ..qr import EcardIssuer
from ..vcard import CardBehaviour
from .benchrig import MODES, WorkbenchRig

log = logging.getLogger("unionterm.sim.web")

#: The example configs shipped with the project, one per mode (config/<mode>.toml).
CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"

STRANGER_UID = bytes.fromhex("04C0FFEE123456")
#: What the terminal itself shows an e-card as, an hour ago: older than any token may live.
EXPIRED_AGE_S = 3600


@dataclass(frozen=True)
class RackCard:
    """A simulated card (or e-card) a person can present, as the rack lists it.

    ``make`` builds a fresh behaviour for each placement (cards keep session
    state); ``code`` makes the QR text for an e-card instead. ``ident`` is the
    raw identifier the member list knows the card by (for blocking), empty
    for cards nobody owns.
    """

    id: str
    kind: str
    label: str
    owner: str = ""
    variant: str = "genuine"
    make: Callable[[], CardBehaviour] | None = None
    code: Callable[[], str] | None = None
    ident: bytes | str = b""

    def ref(self, card_key: bytes) -> bytes | None:
        return card_ref(card_key, self.kind, self.ident) if self.ident else None


KIND_LABELS = {"uid": "badge (UID)", "union": "union card", "pan": "bank card", "ecard": "e-card (QR)"}
CAPABILITY_LABELS = {"keypad": "keypad", "qr": "QR e-card scanner", "ecr": "cash register link",
                     "sync": "signed member lists and hot list"}


# -- cards -----------------------------------------------------------------------------------


def accepted_kinds(rig: WorkbenchRig) -> frozenset[str]:
    """The card kinds the running terminal reads, in member-record words (uid, union, pan, ecard)."""
    kinds = set(rig.terminal.cards.profiles)
    if rig.scanner is not None:
        kinds.add("ecard")
    return frozenset(kinds)


def _token(rig: WorkbenchRig, member_no: str, issuer: EcardIssuer | None = None,
           age_s: float = 0) -> Callable[[], str]:
    """An e-card token made when shown, on the terminal's clock (the scanner checks it by that clock)."""
    return lambda: (issuer or rig.issuer).token(member_no, now=rig.clock.now() - age_s)


def member_cards(rig: WorkbenchRig, person: Person) -> list[RackCard]:
    """Every card ``person`` holds, genuine, in the order a member would reach for them."""
    no = person.member_no
    cards = [RackCard(f"{no}-uid", "uid", KIND_LABELS["uid"], no, make=lambda: UidCard(person.uid),
                      ident=person.uid)]
    if person.union_uid:
        cards.append(RackCard(f"{no}-union", "union", KIND_LABELS["union"], no,
                              make=lambda: rig.union_card(person), ident=person.union_uid))
    if person.pan:
        cards.append(RackCard(f"{no}-pan", "pan", KIND_LABELS["pan"], no, make=person.bank_card, ident=person.pan))
    if person.ecard:
        cards.append(RackCard(f"{no}-ecard", "ecard", KIND_LABELS["ecard"], no, code=_token(rig, no), ident=no))
    return cards


def odd_cards(rig: WorkbenchRig) -> list[RackCard]:
    """Cards that must be refused: a stranger, clones, broken cards, bad tokens.

    The faulty variants are the simulator's own (simulator/cards): each is a
    genuine member's card that misbehaves, so a refusal shows it is the card,
    not the member, that was turned away.
    """
    victim = next((p for p in rig.people if p.status == "active"), rig.people[0])
    no = victim.member_no
    foreign = (os.urandom(16), os.urandom(16))
    return [
        RackCard("stranger-uid", "uid", "stranger's badge", variant="stranger", make=lambda: UidCard(STRANGER_UID)),
        RackCard("clone-union", "union", "cloned union card (no key)", no, "clone",
                 make=lambda: rig.union_card(victim, fault=Fault.FORGED_AUTH)),
        RackCard("foreign-union", "union", "union card from other keys", no, "foreign",
                 make=lambda: victim.union_card(*foreign)),
        RackCard("badmac-union", "union", "union card, corrupt record MAC", no, "faulty",
                 make=lambda: rig.union_card(victim, fault=Fault.BAD_RECORD_MAC)),
        RackCard("pulled-union", "union", "union card pulled away mid-read", no, "pulled",
                 make=lambda: rig.union_card(victim, pull_at=3)),
        RackCard("luhn-pan", "pan", "bank card, wrong check digit", no, "faulty",
                 make=lambda: victim.bank_card(fault=EmvFault.BAD_LUHN)),
        RackCard("ppse-pan", "pan", "bank card, malformed PPSE", no, "faulty",
                 make=lambda: victim.bank_card(fault=EmvFault.PPSE_LENGTH_OVERRUN)),
        RackCard("expired-ecard", "ecard", "e-card token an hour old", no, "expired",
                 code=_token(rig, no, age_s=EXPIRED_AGE_S)),
        RackCard("forged-ecard", "ecard", "e-card signed by another key", no, "forged",
                 code=_token(rig, no, EcardIssuer())),
    ]


def rack(rig: WorkbenchRig) -> list[RackCard]:
    """The whole rack: every member's cards, then the cards that must be refused."""
    cards: list[RackCard] = []
    for person in rig.people:
        cards += member_cards(rig, person)
    return cards + odd_cards(rig)


def unavailable_reason(card: RackCard, accepted: frozenset[str]) -> str:
    """Why ``card`` cannot be presented to this terminal now ('' when it can)."""
    if card.kind not in accepted:
        return f"this terminal does not read {KIND_LABELS[card.kind]}s ([cards] profiles)"
    return ""


def is_blocked(rig: WorkbenchRig, ref: bytes) -> bool:
    """Whether the terminal would refuse the card as hot-listed, read from its own store."""
    members = rig.terminal.members
    return members is not None and members.lookup(ref).hot


def member_status(rig: WorkbenchRig, person: Person) -> str:
    """The member's status as the terminal holds it now (a published delta changes it)."""
    members = rig.terminal.members
    member = members.member(person.member_no) if members is not None else None
    return member.status.value if member is not None else person.status


# -- back office -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def backoffice_intake(port: int, db: Path) -> AsyncIterator[TxConsumer]:
    """The back office's transaction intake on the rig's broker: it stores and acknowledges every record."""
    store = TxStore(db)
    consumer = TxConsumer(store, port=port, client_id="unionterm-workbench-backoffice", reconnect_max_s=0.5)
    task = asyncio.create_task(consumer.run(), name="backoffice-intake")
    try:
        yield consumer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        store.close()


# -- modes and configs -----------------------------------------------------------------------


def example_config(mode: str) -> str:
    """The shipped example config of ``mode`` (what a Pi of that mode runs), or '' if absent."""
    path = CONFIG_DIR / f"{mode}.toml"
    return path.read_text(encoding="utf-8") if path.exists() else ""


def runnable_modes() -> tuple[str, ...]:
    """Modes the workbench can start the terminal in (every mode of the demo scenes)."""
    return MODES


def capabilities(rig: WorkbenchRig) -> list[dict[str, Any]]:
    """The parts of the page that depend on the running terminal: each one's name, label, and
    why it is off now ('' when it is on), as the page shows them."""
    why = {
        "keypad": "" if rig.keypad is not None else "the terminal is starting: no keypad driver yet",
        "qr": "" if rig.scanner is not None else "this rig runs without a QR scanner",
        "ecr": "" if rig.ecr_linked else f"no cash register in {rig.mode} mode: switch to pos",
        "sync": "" if rig.terminal.sync is not None else "the terminal runs no member sync (no [sync] trusted key)",
    }
    return [{"name": name, "label": CAPABILITY_LABELS[name], "available": not reason, "why": reason}
            for name, reason in why.items()]
