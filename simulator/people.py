"""A small, deterministic cast of members and their cards for the simulator.

Records are in the back office's published shape (see docs/protocol.md), so
the terminal's store loads them exactly as it loads a synced list.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from terminal.cardref import card_ref

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英"
ORGS = ("ORG-1001", "ORG-1002", "ORG-2001")


@dataclass(frozen=True)
class Person:
    """A simulated member and the raw identifiers on their cards (never stored by the terminal)."""

    member_no: str
    name: str
    status: str
    uid: bytes

    def record(self, card_key: bytes, org: str) -> dict:
        return {
            "member_no": self.member_no, "name": self.name, "org": org, "status": self.status,
            "tier": 1, "canteen_group": "staff", "access_groups": ["main-gate"],
            "valid_from": 0, "valid_until": 0, "batch": 1, "role": "member", "pin_hash": "",
            "cards": [{"kind": "uid", "ref": card_ref(card_key, "uid", self.uid).hex()}],
        }


def uid_for(member_no: str) -> bytes:
    """A 7-byte NXP-style UID (first byte 0x04) derived from the member number."""
    return b"\x04" + hashlib.sha256(member_no.encode()).digest()[:6]


def cast(count: int = 10) -> list[Person]:
    """``count`` people; every seventh is suspended so the demo shows a denial by status."""
    people = []
    for i in range(1, count + 1):
        no = f"M{i:07d}"
        name = f"{SURNAMES[i % len(SURNAMES)]}*{GIVEN[(i * 7) % len(GIVEN)]}"
        status = "suspended" if i % 7 == 0 else "active"
        people.append(Person(no, name, status, uid_for(no)))
    return people


def records(people: list[Person], card_key: bytes) -> list[dict]:
    return [p.record(card_key, ORGS[i % len(ORGS)]) for i, p in enumerate(people)]
