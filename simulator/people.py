"""A small, deterministic cast of members and their cards for the simulator.

Records are in the back office's published shape (see docs/protocol.md), so
the terminal's store loads them exactly as it loads a synced list. Each
person holds every kind of card a member can have: the union card (a DESFire
with the union application), the co-branded UnionPay card, an e-card (QR
token on the phone) and a legacy MIFARE badge; :class:`Person` builds the
simulated card for each, so a test taps "this member's bank card" without
knowing how one is made.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from terminal.cardref import card_ref

from .backoffice.generate import UNIONPAY_BINS, luhn_check_digit
from .cards.desfire import UnionCard
from .cards.emv import EmvCard

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英"
ORGS = ("ORG-1001", "ORG-1002", "ORG-2001")


@dataclass(frozen=True)
class Person:
    """A simulated member and the raw identifiers on their cards (never stored by the terminal).

    ``uid`` is the legacy badge's UID; ``union_uid`` the union card's real
    UID, ``pan`` the bank card's number (empty: no such card); ``ecard`` says
    whether the member's list entry carries an e-card.
    """

    member_no: str
    name: str
    status: str
    uid: bytes
    union_uid: bytes = b""
    pan: str = ""
    ecard: bool = False

    def cards(self, card_key: bytes) -> list[dict[str, str]]:
        """The member record's ``cards``: one entry per card this person holds."""
        held: list[tuple[str, bytes | str]] = [("uid", self.uid)]
        if self.union_uid:
            held.append(("union", self.union_uid))
        if self.pan:
            held.append(("pan", self.pan))
        if self.ecard:
            held.append(("ecard", self.member_no))
        return [{"kind": kind, "ref": card_ref(card_key, kind, ident).hex()} for kind, ident in held]

    def record(self, card_key: bytes, org: str) -> dict:
        return {
            "member_no": self.member_no, "name": self.name, "org": org, "status": self.status,
            "tier": 1, "canteen_group": "staff", "access_groups": ["main-gate"],
            "valid_from": 0, "valid_until": 0, "batch": 1, "role": "member", "pin_hash": "",
            "cards": self.cards(card_key),
        }

    def union_card(self, read_master: bytes, uid_master: bytes, **options: object) -> UnionCard:
        """This member's union card, personalised from the SAM's master keys (slots 1 and 2)."""
        return UnionCard.personalise(read_master, uid_master, self.union_uid, self.member_no, **options)

    def bank_card(self, **options: object) -> EmvCard:
        """This member's co-branded UnionPay debit card."""
        return EmvCard(pan=self.pan, **options)  # type: ignore[arg-type]


def uid_for(member_no: str) -> bytes:
    """A 7-byte NXP-style UID (first byte 0x04) derived from the member number."""
    return b"\x04" + hashlib.sha256(member_no.encode()).digest()[:6]


def union_uid_for(member_no: str) -> bytes:
    """The union card's 7-byte DESFire UID, distinct from the legacy badge's."""
    return b"\x04" + hashlib.sha256(b"union:" + member_no.encode()).digest()[:6]


def pan_for(member_no: str) -> str:
    """A 16-digit UnionPay number with a valid Luhn digit, derived from the member number."""
    digest = hashlib.sha256(b"pan:" + member_no.encode()).digest()
    body = UNIONPAY_BINS[digest[0] % len(UNIONPAY_BINS)] + f"{int.from_bytes(digest[1:9], 'big') % 10**9:09d}"
    return body + luhn_check_digit(body)


def cast(count: int = 10) -> list[Person]:
    """``count`` people; every seventh is suspended so the demo shows a denial by status."""
    people = []
    for i in range(1, count + 1):
        no = f"M{i:07d}"
        name = f"{SURNAMES[i % len(SURNAMES)]}*{GIVEN[(i * 7) % len(GIVEN)]}"
        status = "suspended" if i % 7 == 0 else "active"
        people.append(Person(no, name, status, uid_for(no), union_uid_for(no), pan_for(no), ecard=True))
    return people


def records(people: list[Person], card_key: bytes) -> list[dict]:
    return [p.record(card_key, ORGS[i % len(ORGS)]) for i, p in enumerate(people)]
