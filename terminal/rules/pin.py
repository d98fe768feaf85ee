"""Member PINs: the stored hash format, verification, tries and the duress variant.

The back office publishes ``pin_hash`` in the member record as
``pbkdf2_sha256$<iterations>$<salt_hex>$<hash_hex>`` (PBKDF2-HMAC-SHA256,
32-byte derived key, salt at least 8 bytes). A 4-6 digit PIN has little
entropy, so the salt and the iteration count are what keep a stolen member
list from yielding PINs within minutes.

Wrong tries are counted per member and business day at this terminal
(counter ``("pin_fail", member_no, d<day>)``); at ``max_tries`` the PIN is
locked until the next business day, and a correct PIN clears the count.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

from terminal.configschema import bounded
from terminal.model import Decision, Member
from terminal.rules.counters import Bump, CounterKey, Tally, day_tag, tally

SCHEME = "pbkdf2_sha256"
KEY_LEN = 32
MIN_SALT = 8
MAX_ITERATIONS = 10_000_000

PIN_REQUIRED = "pin_required"
WRONG_PIN = "wrong_pin"
PIN_LOCKED = "pin_locked"
PIN_NOT_SET = "pin_not_set"

REASONS = frozenset({PIN_REQUIRED, WRONG_PIN, PIN_LOCKED, PIN_NOT_SET})


def hash_pin(pin: str, salt: bytes, iterations: int = 200_000) -> str:
    """Encode a PIN the way the back office stores it (tests and tooling)."""
    digest = hashlib.pbkdf2_hmac("sha256", pin.encode(), salt, iterations, KEY_LEN)
    return f"{SCHEME}${iterations}${salt.hex()}${digest.hex()}"


def _parse(pin_hash: str) -> tuple[int, bytes, bytes] | None:
    """Split a stored hash; None when it is not one we can verify."""
    parts = pin_hash.split("$")
    if len(parts) != 4 or parts[0] != SCHEME or not parts[1].isdigit():
        return None
    try:
        salt, digest = bytes.fromhex(parts[2]), bytes.fromhex(parts[3])
    except ValueError:
        return None
    iterations = int(parts[1])
    if not 1 <= iterations <= MAX_ITERATIONS or len(salt) < MIN_SALT or len(digest) != KEY_LEN:
        return None
    return iterations, salt, digest


def usable(pin_hash: str) -> bool:
    """True when ``pin_hash`` is a well-formed hash this terminal can check."""
    return _parse(pin_hash) is not None


def verify_pin(pin_hash: str, pin: str) -> bool:
    """Constant-time check of an entered PIN; False for any malformed hash."""
    parsed = _parse(pin_hash)
    if parsed is None or not pin.isdigit():
        return False
    iterations, salt, digest = parsed
    return hmac.compare_digest(hashlib.pbkdf2_hmac("sha256", pin.encode(), salt, iterations, KEY_LEN), digest)


def duress_variant(pin: str) -> str:
    """The duress PIN of ``pin``: last digit plus one, 9 wrapping to 0.

    A convention the member can recall under threat without a second
    stored hash; doors that enable duress accept it and raise a silent alarm.
    """
    return pin[:-1] + str((int(pin[-1]) + 1) % 10)


def _undo_duress(pin: str) -> str:
    return pin[:-1] + str((int(pin[-1]) - 1) % 10)


@dataclass(frozen=True)
class PinPolicy:
    """How many wrong PINs a member gets per business day at this terminal."""

    max_tries: int = bounded(3, 1, 10)


class PinResult(enum.Enum):
    OK = "ok"
    DURESS = "duress"
    REFUSED = "refused"


@dataclass(frozen=True)
class PinCheck:
    """Result of one PIN check: refused checks carry the deny decision."""

    result: PinResult
    bumps: tuple[Bump, ...] = ()
    decision: Decision | None = None

    @property
    def ok(self) -> bool:
        return self.result is not PinResult.REFUSED


def fail_key(member_no: str, day: date) -> CounterKey:
    return ("pin_fail", member_no, day_tag(day))


def check_pin(
    member: Member,
    entered: str | None,
    tallies: Mapping[CounterKey, Tally],
    policy: PinPolicy,
    day: date,
    at: int,
    allow_duress: bool = False,
) -> PinCheck:
    """Check ``entered`` against the member's hash, counting wrong tries.

    ``entered=None`` means the terminal has not asked yet: the caller shows
    the PIN pad and decides again with the digits.
    """
    if not usable(member.pin_hash):
        reason_detail = "missing" if not member.pin_hash else "malformed"
        return PinCheck(PinResult.REFUSED, decision=Decision.deny(PIN_NOT_SET, pin_hash=reason_detail))
    key = fail_key(member.member_no, day)
    fails = tally(tallies, key).count
    if fails >= policy.max_tries:
        return PinCheck(PinResult.REFUSED, decision=Decision.deny(PIN_LOCKED, tries=fails))
    if entered is None:
        return PinCheck(PinResult.REFUSED, decision=Decision.deny(PIN_REQUIRED, tries_left=policy.max_tries - fails))
    clear = (Bump(key, at, count=-fails),) if fails else ()
    if verify_pin(member.pin_hash, entered):
        return PinCheck(PinResult.OK, clear)
    if allow_duress and entered.isdigit() and verify_pin(member.pin_hash, _undo_duress(entered)):
        return PinCheck(PinResult.DURESS, clear)
    left = policy.max_tries - fails - 1
    reason = PIN_LOCKED if left <= 0 else WRONG_PIN
    return PinCheck(PinResult.REFUSED, (Bump(key, at),), Decision.deny(reason, tries_left=left))
