"""Async card readers, one per profile, and :func:`identify` that picks one.

A profile is the whole exchange that turns a card in the field into a
:class:`CardIdentity`. These coroutines are the only place in the card layer
that awaits a :class:`CardChannel`; the bytes come from the sans-I/O modules.

Contract with the core: a profile returns an identity or raises a
:class:`CardError` whose ``reason`` is the deny word (``card_not_genuine``,
``card_unreadable``, ``card_removed``, ``sam_unavailable``). Nothing else
escapes, whatever the card sends, because a foreign card must never crash a
tap. Raw UIDs and PANs stay inside: only ``card_ref`` hashes leave.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Awaitable, Callable, Collection
from typing import TypeVar

from terminal.cardref import card_ref
from terminal.cards import apdu, desfire, emv
from terminal.cards.sam import Sam
from terminal.cards.unionapp import RECORD_LEN, UnionAppConfig, parse_member_record
from terminal.exceptions import (
    CardError,
    CardRemoved,
    HardwareError,
    MalformedResponse,
    UnexpectedStatus,
)
from terminal.hardware import CardChannel
from terminal.model import CardIdentity, Strength

log = logging.getLogger("unionterm.cards")

PROFILE_UNION = "union"
PROFILE_PAN = "pan"
PROFILE_UID = "uid"
PROFILES = (PROFILE_UNION, PROFILE_PAN, PROFILE_UID)

#: PC/SC part 3 pseudo-APDU: the reader answers with the anticollision UID.
GET_UID = bytes.fromhex("FFCA000000")

#: PC/SC part 3 ATR marker of a storage card (MIFARE Classic/Ultralight):
#: "4F 0C" application identifier of the PC/SC RID A0 00 00 03 06.
_STORAGE_CARD_MARK = bytes.fromhex("4F0CA000000306")

#: China Standard Time: no daylight saving, so a fixed offset is exact.
CHINA_TZ = datetime.timezone(datetime.timedelta(hours=8), "Asia/Shanghai")

T = TypeVar("T")


async def _guarded(profile: str | Callable[[], str], body: Callable[[], Awaitable[T]]) -> T:
    """Run a profile so that every failure ends as a CardError with a reason.

    ``profile`` may be a callable so :func:`identify` can log the profile it
    had chosen when the failure happened.
    """
    cause: BaseException | None = None
    try:
        return await body()
    except CardError as exc:
        failure: CardError = exc
    except HardwareError as exc:
        failure, cause = CardRemoved(f"reader lost the card: {type(exc).__name__}"), exc
    except Exception as exc:  # a foreign card must never crash a tap
        failure, cause = MalformedResponse(f"unexpected {type(exc).__name__}"), exc
        log.warning("event=card_bug error=%s", type(exc).__name__, exc_info=True)
    name = profile() if callable(profile) else profile
    log.info("event=card_failed profile=%s reason=%s detail=%s", name, failure.reason, type(failure).__name__)
    if cause is None:
        raise failure
    raise failure from cause


def is_storage_card(atr: bytes) -> bool:
    """True for PC/SC-synthesised ATRs of memory cards (no ISO 14443-4)."""
    return _STORAGE_CARD_MARK in atr


def is_random_uid(uid: bytes) -> bool:
    """ISO 14443-3: a 4-byte UID starting 0x08 is re-drawn at every activation."""
    return len(uid) == 4 and uid[0] == 0x08


async def _reader_uid(channel: CardChannel) -> bytes:
    resp = apdu.expect(await channel.transmit(GET_UID), "GET UID")
    if len(resp.data) not in desfire.UID_SIZES:
        raise MalformedResponse(f"GET UID: {len(resp.data)}-byte UID")
    return resp.data


# --- uid ---------------------------------------------------------------------


async def read_uid(channel: CardChannel, card_key: bytes) -> CardIdentity:
    """The anticollision UID alone: copyable, hence WEAK."""

    return await _guarded(PROFILE_UID, lambda: _uid_identity(channel, card_key))


async def _uid_identity(channel: CardChannel, card_key: bytes) -> CardIdentity:
    uid = await _reader_uid(channel)
    if is_random_uid(uid):
        raise MalformedResponse("GET UID: random UID identifies nothing")
    return CardIdentity(PROFILE_UID, card_ref(card_key, "uid", uid), Strength.WEAK)


# --- union (DESFire EV2) --------------------------------------------------------


async def _authenticate(channel: CardChannel, key: bytes, key_no: int) -> desfire.Session:
    handshake = desfire.AuthenticateEv2First(key, key_no)
    second = handshake.answer_challenge(await channel.transmit(handshake.command()))
    return handshake.finish(await channel.transmit(second))


async def _union_selected(channel: CardChannel, sam: Sam, card_key: bytes, config: UnionAppConfig) -> CardIdentity:
    """Everything after a successful SelectApplication of the union app."""
    uid = await _reader_uid(channel)
    if is_random_uid(uid):
        uid_key = await sam.diversified_key(config.uid_key_slot, b"", config.aid)
        session = await _authenticate(channel, uid_key, config.uid_key_no)
        uid = session.parse_get_card_uid(await channel.transmit(session.get_card_uid()))
    key = await sam.diversified_key(config.read_key_slot, uid, config.aid)
    session = await _authenticate(channel, key, config.read_key_no)
    command = session.read_data(config.record_file_no, 0, RECORD_LEN)
    record = parse_member_record(session.parse_read_data(await channel.transmit(command), RECORD_LEN))
    log.debug("event=card_read profile=union strength=strong")
    return CardIdentity(PROFILE_UNION, card_ref(card_key, "union", uid), Strength.STRONG, record.member_no)


async def read_union_app(
    channel: CardChannel,
    sam: Sam,
    card_key: bytes,
    config: UnionAppConfig = UnionAppConfig(),
) -> CardIdentity:
    """Prove a union card with AuthenticateEV2First and read its member record (MAC)."""

    async def body() -> CardIdentity:
        desfire.check_select_application(await channel.transmit(desfire.select_application(config.aid)))
        return await _union_selected(channel, sam, card_key, config)

    return await _guarded(PROFILE_UNION, body)


# --- pan (contactless EMV) ---------------------------------------------------------


def default_terminal_data(now: datetime.datetime | None = None) -> emv.TerminalData:
    """PDOL values for a read made now, in China time, with a fresh UN."""
    today = (now or datetime.datetime.now(CHINA_TZ)).astimezone(CHINA_TZ).date()
    return emv.TerminalData(today=today, unpredictable=os.urandom(4))


async def _pan_after_ppse(channel: CardChannel, ppse_answer: bytes, terminal: emv.TerminalData) -> str:
    app = emv.choose_application(emv.parse_ppse(ppse_answer))
    pdol = emv.parse_select_application(await channel.transmit(emv.select_by_name(app.aid)))
    gpo = emv.get_processing_options(pdol, terminal)
    options = emv.parse_processing_options(await channel.transmit(gpo))
    pan = emv.pan_from_objects(options.objects)
    for sfi, number in emv.records_to_read(options.afl):
        if pan is not None:
            break
        pan = emv.pan_from_objects(emv.parse_record(await channel.transmit(emv.read_record(sfi, number))))
    if pan is None:
        raise MalformedResponse("EMV: no card number in GPO answer or records")
    return pan


def _pan_identity(card_key: bytes, pan: str) -> CardIdentity:
    # WEAK: without offline data authentication the PAN is a readable,
    # replayable number, no better than a UID.
    return CardIdentity(PROFILE_PAN, card_ref(card_key, "pan", pan), Strength.WEAK)


async def read_bank_pan(
    channel: CardChannel, card_key: bytes, terminal: emv.TerminalData | None = None
) -> CardIdentity:
    """Read the card number of a contactless bank card."""

    async def body() -> CardIdentity:
        data = terminal or default_terminal_data()
        pan = await _pan_after_ppse(channel, await channel.transmit(emv.select_ppse()), data)
        return _pan_identity(card_key, pan)

    return await _guarded(PROFILE_PAN, body)


# --- choosing -------------------------------------------------------------------


async def _probe(channel: CardChannel, command: bytes, check: Callable[[bytes], object]) -> bytes | None:
    """Send a SELECT; the answer if the card accepts it, None on a refusal status."""
    raw = await channel.transmit(command)
    try:
        check(raw)
    except UnexpectedStatus:
        return None
    return raw


async def identify(
    channel: CardChannel,
    atr: bytes,
    allowed_profiles: Collection[str],
    *,
    card_key: bytes,
    sam: Sam | None = None,
    union: UnionAppConfig = UnionAppConfig(),
    terminal: emv.TerminalData | None = None,
) -> CardIdentity:
    """Pick the strongest allowed profile the card answers to, and read it.

    Order: union app, then bank card, then bare UID. Once a card accepts the
    union SELECT it is judged as a union card only: a failed authentication
    is ``card_not_genuine``, never a fallback to a weaker profile. (A union
    card read as a UID gives a ``uid`` card_ref, which matches no ``union``
    entry anyway.) Storage cards (PC/SC ATR) can only be ``uid``.
    """
    unknown = set(allowed_profiles) - set(PROFILES)
    if unknown:
        raise ValueError(f"unknown card profiles {sorted(unknown)}")

    chosen = "identify"

    async def body() -> CardIdentity:
        nonlocal chosen
        if not is_storage_card(atr):
            if PROFILE_UNION in allowed_profiles and sam is not None:
                if await _probe(channel, desfire.select_application(union.aid), desfire.check_select_application):
                    chosen = PROFILE_UNION
                    return await _union_selected(channel, sam, card_key, union)
            if PROFILE_PAN in allowed_profiles:
                ppse = await _probe(channel, emv.select_ppse(), lambda raw: apdu.expect(raw, "SELECT PPSE"))
                if ppse is not None:
                    chosen = PROFILE_PAN
                    pan = await _pan_after_ppse(channel, ppse, terminal or default_terminal_data())
                    return _pan_identity(card_key, pan)
        if PROFILE_UID in allowed_profiles:
            chosen = PROFILE_UID
            return await _uid_identity(channel, card_key)
        raise MalformedResponse("card answers to none of the allowed profiles")

    return await _guarded(lambda: chosen, body)
